"""Suppression reasons, in the order the contact policy checks them, with words for people."""

from __future__ import annotations

REASONS: dict[str, str] = {
    "written_off": "the loan is written off: the lender no longer collects it",
    "placed": "the loan is placed with a collection agency (open case)",
    "deceased": "the borrower is recorded as deceased",
    "bankruptcy": "the borrower is in bankruptcy: contact is barred",
    "cease": "the borrower asked us to cease communication",
    "dispute": "the borrower disputes the debt: on hold until a person resolves it",
    "opted_out": "the borrower opted out of this channel",
    "no_consent": "the borrower gave no consent for this channel",
    "no_address": "no usable phone number or email address for this channel",
    "paid_claim": "the borrower said they paid: waiting for the payment to reconcile",
    "promise": "an open promise to pay (promised date plus grace days not yet past)",
    "holiday": "the borrower's local date at the first allowed instant is a public holiday",
    "weekend": "the borrower's local date at the first allowed instant is a weekend day",
    "cap": "the channel's contact cap for the rolling window is reached",
}

ORDER: tuple[str, ...] = tuple(REASONS)


def describe(reason: str) -> str:
    """A sentence a collections agent can read, for `reminder explain`."""
    return REASONS.get(reason, reason)
