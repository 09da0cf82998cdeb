"""The audit rows of issue 6's gaps over SQLite and PostgreSQL: agency file deliveries,
settled promises, answers sent without a message row, contact changes made by an import.
Each is found by `audit export --loan`, holds ids and codes only, and keeps the chain whole
(also after `reminder forget`)."""

from __future__ import annotations

import json
import threading
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, insert, select
from typer.testing import CliRunner

from integrations.folder_transport import FolderTransport
from reminder.bootstrap import App, bootstrap
from reminder.cli import app as cli_app
from reminder.clock import FixedClock
from reminder.config import Config
from reminder.db.tables import audit_log, messages, payments, promises
from reminder.errors import PermanentSendError, SendError, UnconfirmedSendError
from reminder.ports import OutgoingMessage, SendResult
from reminder.services import audit
from reminder.services.daily_run import RunOptions, run_day
from reminder.services.handoff_export import export
from reminder.services.importer import import_file
from reminder.services.replies import InboundReply, handle_reply
from reminder.services.voice_menu import voice_turn
from tests.portfolio import Portfolio

D = date(2026, 12, 2)
NOW = datetime(2026, 12, 2, 15, tzinfo=UTC)  # 10:00 in New York
PHONE = "+12125550123"
NEW_PHONE = "+12125550188"
REPO = Path(__file__).resolve().parents[2]


class FakeSender:
    """Records sends; raises the queued errors first."""

    provider = "fake"

    def __init__(self) -> None:
        self.sent: list[OutgoingMessage] = []
        self.errors: list[SendError] = []
        self.lock = threading.Lock()

    def send(self, message: OutgoingMessage) -> SendResult:
        with self.lock:
            if self.errors:
                raise self.errors.pop(0)
            self.sent.append(message)
            return SendResult(self.provider, f"F{len(self.sent)}")


@pytest.fixture
def sms() -> FakeSender:
    return FakeSender()


@pytest.fixture
def app(engine: Engine, config: Config, sms: FakeSender) -> App:
    """B1 a little late (L1), B2 not due yet (L2), B3 old enough to be placed (L3)."""
    p = Portfolio()
    p.loan("L1", p.borrower("B1", phone=PHONE), first_due=D - timedelta(days=2), count=1)
    p.loan("L2", p.borrower("B2", phone="+12125550144"), first_due=D + timedelta(days=9),
           count=1)  # fmt: skip
    p.loan("L3", p.borrower("B3", phone="+12125550177"), first_due=D - timedelta(days=120),
           count=1)  # fmt: skip
    p.save(engine)
    senders = {"sms": sms, "email": FakeSender(), "voice": FakeSender()}
    return bootstrap(config, engine=engine, clock=FixedClock(NOW), senders=senders)  # type: ignore[arg-type]


def _run(app: App, day: date = D) -> None:
    run_day(app, RunOptions(run_date=day, dispatch=False))


def _events(engine: Engine, kind: str) -> list[Any]:
    with engine.connect() as conn:
        query = select(audit_log).where(audit_log.c.kind == kind).order_by(audit_log.c.id)
        return list(conn.execute(query))


def _exported(engine: Engine, loan_id: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return audit.export_loan(conn, loan_id)


def _intact(engine: Engine) -> bool:
    """The chain verifies and no row holds a name, phone number or email address."""
    with engine.connect() as conn:
        result = audit.verify(conn)
        text = json.dumps([row.detail for row in conn.execute(select(audit_log))])
    assert "+1212" not in text and "Borrower B" not in text and "example.com" not in text
    return result.ok


def _export_files(app: App, folder: Path) -> Any:
    transports = {agency.id: FolderTransport(folder / agency.id) for agency in app.config.agencies}
    return export(app, transports)


def test_each_case_of_a_delivered_agency_file_gets_a_handoff_row_on_its_loan(
    app: App, tmp_path: Path
) -> None:
    _run(app)
    (sent,) = _export_files(app, tmp_path).files
    (row,) = _events(app.engine, "handoff")
    agency = next(a for a in app.config.agencies if a.id == sent.agency)
    assert (row.loan_id, row.borrower_id, row.message_id) == ("L3", "B3", None)
    assert row.detail == {
        "action": "sent", "agency_id": sent.agency, "file": "placements",
        "file_name": sent.file_name, "cases": 1, "sha256": sent.sha256,
        "transport": agency.transport, "reference": None, "case_id": row.detail["case_id"],
    }  # fmt: skip
    assert row.detail["case_id"].endswith("-L3")
    assert not _export_files(app, tmp_path).files  # nothing pending: nothing new recorded
    assert len(_events(app.engine, "handoff")) == 1
    assert "handoff" in [event["kind"] for event in _exported(app.engine, "L3")]
    assert _intact(app.engine)


def test_a_delivered_recall_file_is_recorded_too(app: App, tmp_path: Path) -> None:
    _run(app)
    _export_files(app, tmp_path)
    with app.engine.begin() as conn:
        conn.execute(insert(payments).values(
            payment_id="P1", loan_id="L3", paid_on=D, amount=Decimal("100.00"), source="ledger"))
    _run(app, D + timedelta(days=1))
    (recall,) = _export_files(app, tmp_path).files
    rows = _events(app.engine, "handoff")
    assert [(r.loan_id, r.detail["file"], r.detail["file_name"]) for r in rows] == [
        ("L3", "placements", rows[0].detail["file_name"]), ("L3", "recalls", recall.file_name)]
    assert _intact(app.engine)


def test_a_settled_promise_is_recorded_as_kept_or_broken(app: App) -> None:
    with app.engine.begin() as conn:
        conn.execute(insert(promises), [
            {"borrower_id": borrower, "loan_id": None, "promised_on": D - timedelta(days=5),
             "source": "reply:sms:7", "status": "open", "created_at": NOW - timedelta(days=9)}
            for borrower in ("B1", "B2")
        ])  # fmt: skip
    _run(app)
    settled = {row.borrower_id: row for row in _events(app.engine, "promise")}
    assert {b: row.detail["outcome"] for b, row in settled.items()} == {
        "B1": "broken", "B2": "kept"}
    assert settled["B1"].loan_id is None  # the promise covers every loan of the borrower
    assert settled["B1"].detail == {
        "promise_id": settled["B1"].detail["promise_id"], "outcome": "broken",
        "promised_on": "2026-11-27", "amount": None, "source": "reply:sms:7",
        "run_date": "2026-12-02"}  # fmt: skip
    assert "promise" in [event["kind"] for event in _exported(app.engine, "L1")]
    _run(app)  # a rerun of the day settles nothing again
    assert len(_events(app.engine, "promise")) == 2
    assert _intact(app.engine)


def test_a_dry_run_records_no_settled_promise(app: App) -> None:
    with app.engine.begin() as conn:
        conn.execute(insert(promises).values(
            borrower_id="B1", promised_on=D - timedelta(days=5), source="reply:sms:7",
            status="open", created_at=NOW))  # fmt: skip
    run_day(app, RunOptions(run_date=D, dry_run=True))
    assert _events(app.engine, "promise") == []


def test_an_auto_reply_is_a_send_row_without_a_message_row(app: App, sms: FakeSender) -> None:
    outcome = handle_reply(app, InboundReply(channel="sms", sender=PHONE, body="STOP",
                                             provider_ref="SMr1"))  # fmt: skip
    assert outcome.sent
    (send,) = _events(app.engine, "send")
    assert (send.borrower_id, send.loan_id, send.message_id) == ("B1", None, None)
    assert send.detail == {
        "purpose": "auto_reply", "channel": "sms", "template": "stop",
        "reply_id": outcome.reply_id, "status": "sent", "provider": "fake", "provider_id": "F1",
        "error_code": None}  # fmt: skip
    assert "send" in [event["kind"] for event in _exported(app.engine, "L1")]
    assert _intact(app.engine)


def test_a_refused_auto_reply_is_recorded_as_failed_with_the_providers_code(
    app: App, sms: FakeSender
) -> None:
    sms.errors = [PermanentSendError(f"twilio 400/21610: {PHONE} unsubscribed", "21610",
                                     opted_out=True)]  # fmt: skip
    handle_reply(app, InboundReply(channel="sms", sender=PHONE, body="HELP", provider_ref="SMr2"))
    (send,) = _events(app.engine, "send")
    assert (send.detail["status"], send.detail["error_code"], send.detail["provider_id"]) == (
        "failed", "21610", None)
    assert [row.detail["flag"] for row in _events(app.engine, "flag")] == ["opt_out"]
    assert _intact(app.engine)


def test_an_auto_reply_the_provider_may_have_taken_is_recorded_as_unknown(
    app: App, sms: FakeSender
) -> None:
    sms.errors = [UnconfirmedSendError("timed out; not listed by Twilio yet")]
    handle_reply(app, InboundReply(channel="sms", sender=PHONE, body="HELP", provider_ref="SMr4"))
    (send,) = _events(app.engine, "send")
    assert (send.detail["status"], send.detail["provider_id"]) == ("unknown", None)
    assert _intact(app.engine)


def test_a_payment_link_texted_during_a_call_is_a_send_row(app: App, sms: FakeSender) -> None:
    with app.engine.begin() as conn:
        conn.execute(insert(messages).values(
            loan_id="L1", borrower_id="B1", run_date=D, stage="early", channel="voice",
            episode=D - timedelta(days=2), dpd=2, status="sent", locale="en",
            body="100 USD is overdue", batch_key="20261202-voice-1", created_at=NOW,
            updated_at=NOW))  # fmt: skip
    for _ in range(2):  # the same key twice in one call: one text, one row
        voice_turn(app, "20261202-voice-1", "CA" + "4" * 32, "1", None)
    assert len(sms.sent) == 1
    (send,) = _events(app.engine, "send")
    assert (send.borrower_id, send.message_id) == ("B1", None)
    assert {k: send.detail[k] for k in ("purpose", "channel", "template", "status",
                                        "provider_id")} == {
        "purpose": "pay_link", "channel": "sms", "template": "voice_link", "status": "sent",
        "provider_id": "F1"}  # fmt: skip
    assert _intact(app.engine)


BORROWER_COLUMNS = ("borrower_id,name,phone,email,timezone,locale,risk_grade,consent_sms,"
                    "consent_email,consent_voice")  # fmt: skip


def _csv(path: Path, *lines: str) -> Path:
    path.write_text("\n".join((BORROWER_COLUMNS, *lines)) + "\n", encoding="utf-8")
    return path


def test_an_import_that_changes_a_contact_field_records_which_field_not_the_value(
    app: App, tmp_path: Path
) -> None:
    csv_file = _csv(
        tmp_path / "borrowers.csv",
        f"B1,Borrower B1,{NEW_PHONE},,America/New_York,en,B,false,true,true",
        "B2,Borrower B2,+12125550144,b2@example.com,America/New_York,en,C,true,true,true",
        "B9,Borrower B9,+12125550199,b9@example.com,America/New_York,en,B,false,true,true",
    )  # B1: new phone, email removed, SMS consent withdrawn; B2: risk grade only; B9: new
    assert import_file(app.engine, "borrowers", csv_file).imported == 3
    (row,) = _events(app.engine, "contact")
    assert (row.borrower_id, row.loan_id) == ("B1", None)
    assert row.detail == {"source": "import", "fields": ["phone", "email", "consent_sms"]}
    import_file(app.engine, "borrowers", csv_file)  # the same file again: nothing changes
    assert len(_events(app.engine, "contact")) == 1
    assert "contact" in [event["kind"] for event in _exported(app.engine, "L1")]
    assert _intact(app.engine)


def test_a_partial_import_records_only_the_net_change_of_the_fields_it_carries(
    app: App, tmp_path: Path
) -> None:
    records = [
        {"borrower_id": "B1", "name": "Borrower B1", "phone": NEW_PHONE},
        {"borrower_id": "B1", "name": "Borrower B1", "phone": PHONE, "consent_voice": False},
        {"borrower_id": "B2", "name": "Borrower B2 Smith"},  # name only: not a contact field
    ]  # B1's phone changes and changes back within the chunk: only consent is recorded
    jsonl = tmp_path / "borrowers.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    import_file(app.engine, "borrowers", jsonl)
    assert [(r.borrower_id, r.detail["fields"]) for r in _events(app.engine, "contact")] == [
        ("B1", ["consent_voice"])]
    assert _intact(app.engine)


@pytest.fixture
def workdir(tmp_path: Path, database_url: str, app: App) -> Path:
    text_ = (REPO / "config.toml").read_text(encoding="utf-8")
    text_ = text_.replace('url = "sqlite:///reminder.db"', f'url = "{database_url}"')
    (tmp_path / "config.toml").write_text(text_, encoding="utf-8")
    return tmp_path


def _cli(workdir: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli_app, ["--config", str(workdir / "config.toml"), *args])
    return result.exit_code, result.stdout


def test_export_shows_the_new_rows_and_forget_keeps_the_chain(app: App, workdir: Path) -> None:
    with app.engine.begin() as conn:
        conn.execute(insert(promises).values(
            borrower_id="B3", promised_on=D - timedelta(days=5), source="reply:sms:7",
            status="open", created_at=NOW))  # fmt: skip
    _run(app)
    _export_files(app, workdir / "files")
    handle_reply(app, InboundReply(channel="sms", sender="+12125550177", body="HELP",
                                   provider_ref="SMr3"))  # fmt: skip
    import_file(app.engine, "borrowers", _csv(
        workdir / "borrowers.csv",
        "B3,Borrower B3,+12125550178,b3@example.com,America/New_York,en,B,true,true,true"))
    code, out = _cli(workdir, "audit", "export", "--loan", "L3", "--json")
    kinds = [event["kind"] for event in json.loads(out)["events"]]
    assert code == 0 and {"handoff", "promise", "send", "contact"} <= set(kinds)
    code, out = _cli(workdir, "audit", "export", "--loan", "L3")
    assert code == 0 and "contact" in out and "handoff" in out
    assert _cli(workdir, "forget", "B3")[0] == 0
    code, out = _cli(workdir, "audit", "verify", "--json")
    assert code == 0 and json.loads(out)["ok"] is True
    assert _intact(app.engine)
