"""The Twilio Voice adapter: TwiML in the borrower's language with a one-digit menu, against
our fake Twilio and a Prism mock of Twilio's spec."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest

from integrations.twilio_voice import TwilioVoiceCaller
from reminder.config import ChannelConfig, Config
from reminder.errors import PermanentSendError, TransientSendError
from reminder.ports import OutgoingMessage
from tests.fakes.fake_twilio import ACCOUNT_SID, AUTH_TOKEN, FakeTwilio, Fault

TO, FROM = "+15005550006", "+15005550001"


def voice_config(config: Config, base_url: str, timeout: float = 0.5) -> Config:
    channel = ChannelConfig.model_validate({"provider": "twilio", "from": FROM,
                                            "base_url": base_url, "timeout_seconds": timeout})
    return config.model_copy(update={"channels": {**config.channels, "voice": channel}})


def call(locale: str = "es", body: str = "Hola, le llama Example Lending Co.") -> OutgoingMessage:
    return OutgoingMessage(message_ids=(5,), channel="voice", to=TO, body=body, locale=locale,
                           reference="20261204-voice-5")  # fmt: skip


@pytest.fixture
def fake() -> Iterator[FakeTwilio]:
    with FakeTwilio() as server:
        yield server


@pytest.fixture
def caller(config: Config, fake: FakeTwilio, monkeypatch: pytest.MonkeyPatch) -> TwilioVoiceCaller:
    monkeypatch.setenv("TWILIO_ACCOUNT_SID", ACCOUNT_SID)
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", AUTH_TOKEN)
    return TwilioVoiceCaller(voice_config(config, fake.base_url))


def test_the_call_asks_our_webhook_what_to_say_once_it_knows_who_answered(
    caller: TwilioVoiceCaller, fake: FakeTwilio, config: Config
):
    result = caller.send(call())
    [accepted] = fake.accepted
    assert (accepted.kind, accepted.sid, accepted.to) == ("call", result.provider_id, TO)
    url = urlsplit(accepted.body)  # the fake records a call's Url (or Twiml) as its body
    assert url.geturl().startswith(config.server.public_url + "/webhooks/twilio/voice")
    assert parse_qs(url.query) == {"ref": ["20261204-voice-5"]}
    assert "Hola" not in accepted.body  # the words come from the webhook, after AMD
    assert "ref=20261204-voice-5" in accepted.status_callback


def test_call_errors_are_translated(caller: TwilioVoiceCaller, fake: FakeTwilio):
    fake.fail_next(Fault.server_error(503))
    with pytest.raises(TransientSendError):
        caller.send(call())
    fake.fail_next(Fault.invalid_number())
    with pytest.raises(PermanentSendError):
        caller.send(call())


def test_a_timeout_after_twilio_placed_the_call_is_found_not_redialled(caller, fake):
    fake.fail_next(Fault.slow(1.5))
    result = caller.send(call())
    assert [a.sid for a in fake.accepted] == [result.provider_id]


def test_lookup_finds_a_call_placed_since_the_claim(caller: TwilioVoiceCaller):
    since = datetime.now(UTC) - timedelta(seconds=1)
    assert caller.lookup(call(), since) is None
    placed = caller.send(call())
    assert caller.lookup(call(), since) == placed


@pytest.fixture(scope="module")
def prism_twilio() -> Iterator[str]:
    from tests.fakes.prism import TWILIO_SPEC, prism_mock

    with prism_mock(TWILIO_SPEC) as base_url:
        yield base_url


def test_the_call_request_matches_twilios_own_spec(config, prism_twilio, monkeypatch):
    monkeypatch.setenv("TWILIO_ACCOUNT_SID", "AC" + "0123456789abcdef" * 2)
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "any-token")
    caller = TwilioVoiceCaller(voice_config(config, prism_twilio, timeout=30))
    assert caller.send(call(locale="zh-CN", body="您好")).provider_id.startswith("CA")
