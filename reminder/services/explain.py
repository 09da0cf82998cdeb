"""`reminder explain LOAN_ID`: why a loan is (not) being contacted, in words.

Everything here is read from the same SQL the run uses (evaluation, the policy's
conditions), so what `explain` says is what the run did or would do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy import Connection, and_, literal, or_, select

from reminder.bootstrap import App
from reminder.db.tables import borrowers, cases, contact_flags, loans, messages, promises
from reminder.db.types import from_cents
from reminder.domain.reasons import ORDER, describe
from reminder.services.evaluation import loan_state
from reminder.services.policy import PolicyInputs, conditions


@dataclass
class Explanation:
    loan_id: str
    as_of: date
    found: bool = True
    status: str | None = None
    borrower_id: str | None = None
    episode: date | None = None
    dpd: int | None = None
    overdue: Any = None
    stage: str | None = None
    rules: list[dict[str, Any]] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "loan_id": self.loan_id,
            "date": self.as_of.isoformat(),
            "found": self.found,
            "loan_status": self.status,
            "borrower_id": self.borrower_id,
            "oldest_unpaid_due_date": self.episode.isoformat() if self.episode else None,
            "dpd": self.dpd,
            "overdue_balance": str(self.overdue) if self.overdue is not None else None,
            "stage": self.stage,
            "rules": self.rules,
            "messages": self.messages,
        }


def _stage_for(app: App, dpd: int | None) -> str | None:
    if dpd is None:
        return None
    return next((s.name for s in app.config.stages if s.dpd[0] <= dpd <= s.dpd[1]), None)


def _policy_rules(
    conn: Connection, app: App, loan_id: str, as_of: date, now: datetime
) -> list[dict[str, Any]]:
    """Each policy rule, per channel, with whether it applies today."""
    rules: list[dict[str, Any]] = []
    for channel in ("sms", "email", "voice"):
        found = conditions(
            PolicyInputs(
                loan_id=loans.c.loan_id,
                loan_status=loans.c.status,
                borrower_id=loans.c.borrower_id,
                channel=literal(channel),
            ),
            app.config,
            as_of,
            now,
        )
        query = (
            select(*(cond.label(name) for name, cond in found.items()))
            .select_from(loans.join(borrowers, borrowers.c.borrower_id == loans.c.borrower_id))
            .where(loans.c.loan_id == loan_id)
        )
        row = conn.execute(query).mappings().one()
        for reason in ORDER:
            if reason in row and row[reason]:
                rules.append({"channel": channel, "rule": reason, "applies": True,
                              "text": describe(reason)})
    return rules


def explain(app: App, loan_id: str, as_of: date | None = None) -> Explanation:
    now = app.clock.now()
    as_of = as_of or now.astimezone(app.config.run.tz).date()
    result = Explanation(loan_id=loan_id, as_of=as_of)
    with app.engine.connect() as conn:
        loan = conn.execute(select(loans).where(loans.c.loan_id == loan_id)).mappings().first()
        if loan is None:
            result.found = False
            return result
        result.status, result.borrower_id = loan["status"], loan["borrower_id"]
        state = conn.execute(loan_state(app.config, as_of, [loan_id])).mappings().first()
        if state is not None:
            result.episode, result.dpd = state["episode"], state["dpd"]
            result.overdue = from_cents(state["overdue_cents"])
        result.stage = _stage_for(app, result.dpd if result.episode else None)
        result.rules = _describe_state(app, result) + _policy_rules(
            conn, app, loan_id, as_of, now
        ) + _history_notes(conn, loan_id, loan["borrower_id"])
        result.messages = [
            dict(row)
            for row in conn.execute(
                select(
                    messages.c.run_date, messages.c.stage, messages.c.channel,
                    messages.c.status, messages.c.reason, messages.c.not_before,
                    messages.c.error_code,
                )
                .where(messages.c.loan_id == loan_id)
                .order_by(messages.c.run_date.desc(), messages.c.channel)
                .limit(30)
            ).mappings()
        ]
    return result


def _describe_state(app: App, result: Explanation) -> list[dict[str, Any]]:
    if result.episode is None:
        return [{"rule": "current", "applies": True,
                 "text": "no unpaid installment: the loan is current and gets no reminders"}]
    if result.stage is None:
        return [{"rule": "stage", "applies": False,
                 "text": f"dpd {result.dpd} is in no configured stage: no reminders today"}]
    stage = app.config.stage(result.stage)
    assert stage is not None
    if stage.handoff:
        return [{"rule": "stage", "applies": True,
                 "text": f"stage {stage.name} (dpd {list(stage.dpd)}): no reminders; the loan "
                         f"is placed with an agency when its overdue balance reaches "
                         f"{app.config.handoff.min_balance}"}]
    return [{"rule": "stage", "applies": True,
             "text": f"stage {stage.name} (dpd {list(stage.dpd)}), every {stage.every_days} "
                     f"day(s) on {', '.join(stage.channels)} (risk-grade overrides apply)"}]


def _history_notes(conn: Connection, loan_id: str, borrower_id: str) -> list[dict[str, Any]]:
    notes: list[dict[str, Any]] = []
    for row in conn.execute(
        select(promises.c.promised_on, promises.c.status, promises.c.source).where(
            promises.c.borrower_id == borrower_id, promises.c.status.in_(("open", "broken")),
            or_(promises.c.loan_id.is_(None), promises.c.loan_id == loan_id),
        ).order_by(promises.c.promised_on)
    ):
        if row.status == "broken":
            notes.append({"rule": "broken_promise", "applies": True, "text":
                          f"promise to pay by {row.promised_on} was broken; reminders resumed"})
        else:
            notes.append({"rule": "promise_detail", "applies": True, "text":
                          f"promise to pay by {row.promised_on} (via {row.source}), open"})
    for row in conn.execute(
        select(contact_flags.c.kind, contact_flags.c.channel, contact_flags.c.source,
               contact_flags.c.created_at).where(
            contact_flags.c.borrower_id == borrower_id, contact_flags.c.lifted_at.is_(None),
            or_(contact_flags.c.loan_id.is_(None), contact_flags.c.loan_id == loan_id),
        ).order_by(contact_flags.c.created_at)
    ):
        scope = f" ({row.channel})" if row.channel else ""
        notes.append({"rule": "flag", "applies": True, "text":
                      f"{row.kind}{scope} since {row.created_at:%Y-%m-%d} (source: {row.source})"})
    for row in conn.execute(
        select(cases.c.case_id, cases.c.agency_id, cases.c.status, cases.c.placed_on).where(
            and_(cases.c.loan_id == loan_id)
        )
    ):
        notes.append({"rule": "case", "applies": row.status == "open",
                      "text": f"case {row.case_id} with {row.agency_id} placed {row.placed_on} "
                              f"({row.status})"})
    return notes
