"""Provider error texts are stored on message rows and logged: no full phone number in them."""

from __future__ import annotations

from integrations.twilio_sms import mask_phones


def test_a_phone_number_quoted_in_a_twilio_error_is_masked() -> None:
    text = "twilio 400/21211: The 'To' number +14155552671 is not a valid phone number."
    masked = mask_phones(text)
    assert "4155552671" not in masked
    assert masked == "twilio 400/21211: The 'To' number +14***71 is not a valid phone number."


def test_error_codes_and_statuses_are_left_readable() -> None:
    assert mask_phones("twilio 429/20429: Too Many Requests") == (
        "twilio 429/20429: Too Many Requests")
