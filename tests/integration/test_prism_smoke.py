"""The official twilio and sendgrid clients against Prism mocks of the providers' own specs.

Proves the requests the clients send are what the providers' OpenAPI descriptions accept, and
that Prism really validates (what it answers is described in ``tests.fakes.prism``).
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import sendgrid
from python_http_client.exceptions import BadRequestsError
from sendgrid.helpers.mail import CustomArg, Mail, Personalization, To
from twilio.base.exceptions import TwilioRestException
from twilio.rest import Client

from tests.fakes.prism import SENDGRID_SPEC, TWILIO_SPEC, prism_mock

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
MESSAGES = f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
SEND = {"To": "+15005550006", "From": "+15005550001", "Body": "Your payment is due"}


@pytest.fixture(scope="module")
def twilio_base() -> Iterator[str]:
    with prism_mock(TWILIO_SPEC) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def sendgrid_base() -> Iterator[str]:
    with prism_mock(SENDGRID_SPEC) as base_url:
        yield base_url


@pytest.fixture
def twilio(twilio_base: str) -> Client:
    client = Client(ACCOUNT_SID, "any-token")
    client.api.base_url = twilio_base
    return client


def reminder_mail(to: str = "borrower@example.com") -> Mail:
    mail = Mail(from_email="collections@lender.example", to_emails=to,
                subject="Payment reminder", plain_text_content="Your payment is due.")
    mail.custom_arg = [CustomArg("message_id", "42"), CustomArg("loan_id", "L-1")]
    return mail


def test_prism_accepts_the_official_twilio_message_create(twilio: Client):
    message = twilio.messages.create(to=SEND["To"], from_=SEND["From"], body=SEND["Body"])
    assert message.sid.startswith("SM") and message.status == "queued"


def test_prism_rejects_a_twilio_message_without_to_with_422(twilio: Client, twilio_base: str):
    with pytest.raises(TwilioRestException) as caught:
        twilio.messages.create(to=None, from_=SEND["From"], body=SEND["Body"])
    assert caught.value.status == 422
    without_to = {k: v for k, v in SEND.items() if k != "To"}
    answer = httpx.post(twilio_base + MESSAGES, data=without_to, auth=(ACCOUNT_SID, "t"))
    assert answer.status_code == 422
    assert answer.headers["content-type"] == "application/problem+json"
    assert "required property 'To'" in answer.text


def test_prism_wants_basic_auth_and_a_well_formed_account_sid(twilio_base: str):
    assert httpx.post(twilio_base + MESSAGES, data=SEND).status_code == 401
    bearer = {"Authorization": "Bearer x"}
    assert httpx.post(twilio_base + MESSAGES, data=SEND, headers=bearer).status_code == 401
    assert httpx.post(twilio_base + MESSAGES, data=SEND, auth=("u", "p")).status_code == 201
    bad_sid = MESSAGES.replace(ACCOUNT_SID, "ACnot-a-sid")
    assert httpx.post(twilio_base + bad_sid, data=SEND, auth=("u", "p")).status_code == 422


def test_prism_accepts_a_sendgrid_mail_with_custom_args(sendgrid_base: str):
    client = sendgrid.SendGridAPIClient("SG.test-key", host=sendgrid_base)
    mail = reminder_mail()
    assert mail.get()["custom_args"] == {"message_id": "42", "loan_id": "L-1"}
    assert client.send(mail).status_code == 202


def test_prism_rejects_a_sendgrid_mail_with_1001_personalizations(sendgrid_base: str):
    client = sendgrid.SendGridAPIClient("SG.test-key", host=sendgrid_base)
    mail = reminder_mail()
    for n in range(1000):
        personalization = Personalization()
        personalization.add_to(To(f"borrower{n}@example.com"))
        mail.add_personalization(personalization)
    assert len(mail.get()["personalizations"]) == 1001
    with pytest.raises(BadRequestsError) as caught:
        client.send(mail)
    assert caught.value.status_code == 400


def test_prism_wants_a_sendgrid_bearer_token(sendgrid_base: str):
    answer = httpx.post(sendgrid_base + "/v3/mail/send", json=reminder_mail().get())
    assert answer.status_code == 401
