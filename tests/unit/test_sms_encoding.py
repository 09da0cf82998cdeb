"""Tests for reminder.domain.sms_encoding: encodings, unit counts and segment boundaries."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reminder.domain.sms_encoding import (
    GSM_BASIC_CHARS,
    GSM_EXTENSION_CHARS,
    SmsEncoding,
    sms_encoding,
)

GSM_ALPHABET = sorted(GSM_BASIC_CHARS | GSM_EXTENSION_CHARS)
gsm_chars = st.sampled_from(GSM_ALPHABET)
non_gsm_chars = st.characters(
    codec="utf-8", exclude_characters="".join(GSM_ALPHABET), exclude_categories=("Cs",)
)


def test_empty_text_has_no_segments() -> None:
    assert sms_encoding("") == SmsEncoding("GSM-7", 0, 0)


def test_the_basic_table_has_127_characters_and_the_extension_table_10() -> None:
    assert len(GSM_BASIC_CHARS) == 127  # 128 positions less the escape
    assert frozenset("\f^{}\\[~]|€") == GSM_EXTENSION_CHARS
    assert not GSM_BASIC_CHARS & GSM_EXTENSION_CHARS


@pytest.mark.parametrize("char", list("@£$¥èéùìòÇØøÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ¤¡ÄÖÑÜ§¿äöñüà\n\r"))
def test_accented_and_greek_gsm_characters_stay_gsm7(char: str) -> None:
    assert sms_encoding(char * 3) == SmsEncoding("GSM-7", 3, 1)


@pytest.mark.parametrize("char", list("ç`áíóúâêÁ\t"))
def test_characters_outside_gsm_0338_force_ucs2(char: str) -> None:
    assert sms_encoding("Pay now " + char).encoding == "UCS-2"


@pytest.mark.parametrize(
    ("length", "segments"), [(1, 1), (160, 1), (161, 2), (306, 2), (307, 3), (459, 3), (460, 4)]
)
def test_gsm7_segment_boundaries(length: int, segments: int) -> None:
    assert sms_encoding("a" * length) == SmsEncoding("GSM-7", length, segments)


@pytest.mark.parametrize(
    ("length", "segments"), [(1, 1), (70, 1), (71, 2), (134, 2), (135, 3), (201, 3), (202, 4)]
)
def test_ucs2_segment_boundaries(length: int, segments: int) -> None:
    assert sms_encoding("Ж" * length) == SmsEncoding("UCS-2", length, segments)


@pytest.mark.parametrize("char", sorted(GSM_EXTENSION_CHARS))
def test_each_extension_character_counts_two_septets(char: str) -> None:
    assert sms_encoding(char) == SmsEncoding("GSM-7", 2, 1)


def test_eighty_euro_signs_fill_one_segment_and_eighty_one_need_two() -> None:
    assert sms_encoding("€" * 80) == SmsEncoding("GSM-7", 160, 1)
    assert sms_encoding("€" * 81) == SmsEncoding("GSM-7", 162, 2)


def test_one_extension_character_pushes_159_letters_into_two_segments() -> None:
    assert sms_encoding("a" * 158 + "{").segments == 1
    assert sms_encoding("a" * 159 + "{") == SmsEncoding("GSM-7", 161, 2)


def test_chinese_text_is_ucs2_one_unit_per_character() -> None:
    text = "您的贷款已逾期三天，请尽快还款。"
    assert sms_encoding(text) == SmsEncoding("UCS-2", len(text), 1)
    assert sms_encoding(text * 5) == SmsEncoding("UCS-2", 80, 2)


def test_an_emoji_counts_two_utf16_units() -> None:
    assert sms_encoding("😀") == SmsEncoding("UCS-2", 2, 1)
    assert sms_encoding("Thanks 👍") == SmsEncoding("UCS-2", 9, 1)
    assert sms_encoding("😀" * 35) == SmsEncoding("UCS-2", 70, 1)
    assert sms_encoding("😀" * 36) == SmsEncoding("UCS-2", 72, 2)


def test_one_non_gsm_character_turns_the_whole_text_ucs2() -> None:
    assert sms_encoding("a" * 100 + "é") == SmsEncoding("GSM-7", 101, 1)
    assert sms_encoding("a" * 100 + "ę") == SmsEncoding("UCS-2", 101, 2)


def test_extension_characters_count_once_in_ucs2() -> None:
    assert sms_encoding("€ ę") == SmsEncoding("UCS-2", 3, 1)


@given(st.text(gsm_chars, max_size=400), gsm_chars)
def test_appending_a_gsm_character_never_lowers_gsm_segments(text: str, char: str) -> None:
    before, after = sms_encoding(text), sms_encoding(text + char)
    assert before.encoding == after.encoding == "GSM-7"
    assert after.units == before.units + (2 if char in GSM_EXTENSION_CHARS else 1)
    assert after.segments >= before.segments


@given(st.text(max_size=300), non_gsm_chars, st.text(max_size=1))
def test_appending_to_ucs2_text_never_lowers_segments(head: str, forcing: str, tail: str) -> None:
    text = head + forcing
    before, after = sms_encoding(text), sms_encoding(text + tail)
    assert before.encoding == after.encoding == "UCS-2"
    assert after.units >= before.units
    assert after.segments >= before.segments
