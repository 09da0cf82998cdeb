"""A tiny builder for test portfolios, written straight into the tables (no importer)."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

from sqlalchemy import Engine, insert

from reminder.db.tables import borrowers, installments, loans, payments


class Portfolio:
    """Collects rows, then `save()` writes them in one transaction."""

    def __init__(self) -> None:
        self.borrowers: list[dict[str, object]] = []
        self.loans: list[dict[str, object]] = []
        self.installments: list[dict[str, object]] = []
        self.payments: list[dict[str, object]] = []

    def borrower(self, borrower_id: str, **fields: object) -> str:
        row: dict[str, object] = {
            "borrower_id": borrower_id,
            "name": f"Borrower {borrower_id}",
            "phone": "+12125550100",
            "email": f"{borrower_id.lower()}@example.com",
            "timezone": "America/New_York",
            "locale": "en",
            "risk_grade": "B",
            "consent_sms": True,
            "consent_email": True,
            "consent_voice": True,
        }
        row.update(fields)
        self.borrowers.append(row)
        return borrower_id

    def loan(
        self,
        loan_id: str,
        borrower_id: str,
        *,
        first_due: date,
        count: int = 3,
        amount: str = "100.00",
        every_days: int = 30,
        status: str = "active",
        currency: str = "USD",
    ) -> str:
        self.loans.append(
            {
                "loan_id": loan_id,
                "borrower_id": borrower_id,
                "currency": currency,
                "principal": Decimal(amount) * count,
                "opened_on": first_due - timedelta(days=30),
                "status": status,
            }
        )
        for seq in range(1, count + 1):
            self.installments.append(
                {
                    "loan_id": loan_id,
                    "seq": seq,
                    "due_date": first_due + timedelta(days=every_days * (seq - 1)),
                    "amount_due": Decimal(amount),
                }
            )
        return loan_id

    def pay(self, payment_id: str, loan_id: str, paid_on: date, amount: str) -> None:
        self.payments.append(
            {
                "payment_id": payment_id,
                "loan_id": loan_id,
                "paid_on": paid_on,
                "amount": Decimal(amount),
                "source": "ledger",
            }
        )

    def save(self, engine: Engine) -> None:
        with engine.begin() as conn:
            for table, rows in (
                (borrowers, self.borrowers),
                (loans, self.loans),
                (installments, self.installments),
                (payments, self.payments),
            ):
                if rows:
                    conn.execute(insert(table), rows)
