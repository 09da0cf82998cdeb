"""The Twilio SMS adapter with the official client: against our fake Twilio (errors, 429,
timeouts, lookups) and against a Prism mock of Twilio's own OpenAPI spec (request shape)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from integrations.twilio_sms import TwilioSmsSender
from reminder.bootstrap import bootstrap
from reminder.config import ChannelConfig, Config
from reminder.errors import (
    ConfigError,
    PermanentSendError,
    TransientSendError,
    UnconfirmedSendError,
)
from reminder.ports import OutgoingMessage
from tests.fakes.fake_twilio import ACCOUNT_SID, AUTH_TOKEN, FakeTwilio, Fault

TO = "+15005550006"
FROM = "+15005550001"


def sms_config(config: Config, base_url: str, **extra: Any) -> Config:
    channel = ChannelConfig.model_validate({"provider": "twilio", "from": FROM,
                                            "base_url": base_url, **extra})  # fmt: skip
    return config.model_copy(update={"channels": {**config.channels, "sms": channel}})


def message(body: str = "Example Lending Co.: your payment is due. Reply STOP to opt out.",
            to: str = TO, reference: str = "20261204-sms-17") -> OutgoingMessage:
    return OutgoingMessage(message_ids=(17,), channel="sms", to=to, body=body, locale="en",
                           reference=reference)  # fmt: skip


@pytest.fixture
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWILIO_ACCOUNT_SID", ACCOUNT_SID)
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", AUTH_TOKEN)


@pytest.fixture
def fake() -> Iterator[FakeTwilio]:
    with FakeTwilio() as server:
        yield server


@pytest.fixture
def sender(config: Config, fake: FakeTwilio, credentials: None) -> TwilioSmsSender:
    return TwilioSmsSender(sms_config(config, fake.base_url, timeout_seconds=0.5))


def test_a_send_returns_twilios_sid_and_carries_our_reference_not_pii(sender, fake, config):
    result = sender.send(message())
    [accepted] = fake.messages
    assert (result.provider, result.provider_id) == ("twilio", accepted.sid)
    assert (accepted.to, accepted.from_) == (TO, FROM)
    callback = urlsplit(accepted.status_callback)
    assert callback.geturl().startswith(config.server.public_url + "/webhooks/twilio/status")
    assert parse_qs(callback.query) == {"ref": ["20261204-sms-17"]}
    assert TO not in accepted.status_callback


def test_a_messaging_service_replaces_from(config, fake, credentials):
    service = "MG" + "1" * 32
    sender = TwilioSmsSender(sms_config(config, fake.base_url, messaging_service_sid=service))
    sender.send(message())
    assert fake.messages[0].from_ == service


def test_21610_is_permanent_and_means_opted_out(sender, fake):
    fake.fail_recipient(TO, Fault.opted_out())
    with pytest.raises(PermanentSendError) as caught:
        sender.send(message())
    assert (caught.value.code, caught.value.opted_out) == ("21610", True)


def test_an_invalid_number_is_permanent_but_not_an_opt_out(sender, fake):
    fake.fail_next(Fault.invalid_number())
    with pytest.raises(PermanentSendError) as caught:
        sender.send(message())
    assert (caught.value.code, caught.value.opted_out) == ("21211", False)


def test_429_is_transient_with_the_retry_after_seconds(sender, fake):
    fake.fail_next(Fault.rate_limited(retry_after=3))
    with pytest.raises(TransientSendError) as caught:
        sender.send(message())
    assert (caught.value.code, caught.value.retry_after) == ("20429", 3.0)


@pytest.mark.parametrize("status", [500, 503])
def test_server_errors_are_transient(sender, fake, status):
    fake.fail_next(Fault.server_error(status))
    with pytest.raises(TransientSendError):
        sender.send(message())
    assert fake.messages == []


def test_a_dropped_connection_that_sent_nothing_is_transient(sender, fake):
    fake.fail_next(Fault.dropped())
    with pytest.raises(TransientSendError) as caught:
        sender.send(message())
    assert caught.value.code == "connection"


def test_a_timeout_after_twilio_took_the_message_is_found_not_resent(sender, fake):
    fake.fail_next(Fault.slow(1.5))
    result = sender.send(message())
    [accepted] = fake.messages
    assert result.provider_id == accepted.sid


def test_a_slow_failure_that_took_nothing_is_a_transient_timeout(sender, fake):
    fake.fail_next(Fault.slow(1.5, accept=False))
    with pytest.raises(TransientSendError) as caught:
        sender.send(message())
    assert caught.value.code == "timeout" and fake.messages == []


def test_a_timeout_twilio_takes_only_after_the_client_gave_up_is_unconfirmed(sender, fake):
    fake.fail_next(Fault.late(1.5))
    started = datetime.now(UTC)
    with pytest.raises(UnconfirmedSendError) as caught:  # not found yet: never retried now
        sender.send(message())
    assert caught.value.code == "timeout" and fake.messages == []
    [accepted] = fake.wait_for(1, timeout=5)
    found = sender.lookup(message(), started)  # what reconciliation asks, later
    assert found is not None and found.provider_id == accepted.sid


def test_lookup_finds_the_exact_body_sent_to_the_number_since_the_claim(sender, fake):
    since = datetime.now(UTC) - timedelta(seconds=1)
    sent = sender.send(message())
    sender.send(message(body="another text"))
    assert sender.lookup(message(), since) == sent
    assert sender.lookup(message(body="never sent"), since) is None
    assert sender.lookup(message(), datetime.now(UTC) + timedelta(seconds=5)) is None


@pytest.mark.parametrize("missing", ["TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN"])
def test_a_missing_credential_fails_at_start_up_naming_it(
    config, fake, credentials, monkeypatch, engine, missing
):
    monkeypatch.delenv(missing)
    app = bootstrap(sms_config(config, fake.base_url), engine=engine)
    with pytest.raises(ConfigError) as caught:
        app.check_channels()
    assert caught.value.field == missing


def test_a_twilio_channel_needs_a_sender(config, fake, credentials):
    channel = ChannelConfig(provider="twilio", base_url=fake.base_url)
    with pytest.raises(ConfigError) as caught:
        TwilioSmsSender(config.model_copy(update={"channels": {"sms": channel}}))
    assert caught.value.field == "channels.sms.from"


def test_the_auth_token_never_shows_in_repr(credentials):
    from integrations.credentials import TwilioCredentials

    assert AUTH_TOKEN not in repr(TwilioCredentials.from_env("sms"))


@pytest.fixture(scope="module")
def prism_twilio() -> Iterator[str]:
    from tests.fakes.prism import TWILIO_SPEC, prism_mock

    with prism_mock(TWILIO_SPEC) as base_url:
        yield base_url


def test_the_request_matches_twilios_own_spec(config, prism_twilio, monkeypatch):
    monkeypatch.setenv("TWILIO_ACCOUNT_SID", "AC" + "0123456789abcdef" * 2)
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "any-token")
    sender = TwilioSmsSender(sms_config(config, prism_twilio))
    result = sender.send(message(body="Example Lending Co.: 您的还款已逾期。回复TD退订"))
    assert result.provider_id.startswith("SM")  # Prism validated the request and answered 201
