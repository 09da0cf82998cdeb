"""How an SMS body is encoded and how many segments it is billed as.

A pure function over the text: no SDK, no network. Carriers (and Twilio's bill) send a body in
GSM-7 when every character is in the GSM 03.38 alphabet, otherwise in UCS-2. A single message
holds 160 septets (GSM-7) or 70 UTF-16 code units (UCS-2); a longer one is split into parts of
153 or 67 because each part carries a 6-byte user-data header.

The segment count is the plain ``ceil(units / per_part)`` estimate. Real senders never split an
escape sequence or a surrogate pair across two parts, so a text with an extension character
or an emoji exactly at a part boundary can take one segment more than this estimate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

GSM_7 = "GSM-7"
UCS_2 = "UCS-2"

# GSM 03.38 default alphabet, positions 0x00-0x7F in order; 0x1B (escape) is not a character
# of its own and is left out. Position 0x09 is LATIN CAPITAL LETTER C WITH CEDILLA.
GSM_BASIC_CHARS: frozenset[str] = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅå"
    "Δ_ΦΓΛΩΠΨΣΘΞÆæßÉ"
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNO"
    "PQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmno"
    "pqrstuvwxyzäöñüà"
)

# GSM 03.38 extension table: sent as escape (0x1B) + code, so each costs two septets.
# Form feed 0x0A, ^ 0x14, { 0x28, } 0x29, \ 0x2F, [ 0x3C, ~ 0x3D, ] 0x3E, | 0x40, € 0x65.
GSM_EXTENSION_CHARS: frozenset[str] = frozenset("\f^{}\\[~]|€")

GSM_SINGLE_MAX = 160
GSM_PART_MAX = 153
UCS2_SINGLE_MAX = 70
UCS2_PART_MAX = 67


@dataclass(frozen=True)
class SmsEncoding:
    """The encoding of one SMS body and what it costs.

    Attributes:
        encoding: ``"GSM-7"`` or ``"UCS-2"``.
        units: Septets for GSM-7 (extension characters count 2), UTF-16 code units for UCS-2.
        segments: Parts the body is sent (and billed) as; 0 for an empty body.
    """

    encoding: str
    units: int
    segments: int


def is_gsm7(text: str) -> bool:
    """Return True when every character of ``text`` is in the GSM 03.38 alphabet."""
    return all(c in GSM_BASIC_CHARS or c in GSM_EXTENSION_CHARS for c in text)


def gsm7_units(text: str) -> int:
    """Count septets of a GSM-7 ``text``: two for an extension character, one otherwise."""
    return sum(2 if c in GSM_EXTENSION_CHARS else 1 for c in text)


def ucs2_units(text: str) -> int:
    """Count UTF-16 code units: a character outside the BMP (an emoji) counts two."""
    return len(text.encode("utf-16-le")) // 2


def _segments(units: int, single_max: int, part_max: int) -> int:
    if units == 0:
        return 0
    if units <= single_max:
        return 1
    return math.ceil(units / part_max)


def sms_encoding(text: str) -> SmsEncoding:
    """Tell how ``text`` would be sent as an SMS.

    Args:
        text: The message body exactly as it will be sent.

    Returns:
        The encoding, its unit count and the number of segments.
    """
    if is_gsm7(text):
        units = gsm7_units(text)
        return SmsEncoding(GSM_7, units, _segments(units, GSM_SINGLE_MAX, GSM_PART_MAX))
    units = ucs2_units(text)
    return SmsEncoding(UCS_2, units, _segments(units, UCS2_SINGLE_MAX, UCS2_PART_MAX))
