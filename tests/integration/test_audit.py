"""The audit trail on SQLite and PostgreSQL: what a run records, tampering, forget, export."""

from __future__ import annotations

import hashlib
import json
import threading
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, delete, func, insert, select, text, update
from typer.testing import CliRunner

from reminder.bootstrap import bootstrap
from reminder.cli import app as cli_app
from reminder.cli.forget import forget_borrower
from reminder.clock import FixedClock
from reminder.config import Config
from reminder.db.tables import (
    audit_log,
    borrowers,
    cases,
    installments,
    loans,
    messages,
    payments,
    replies,
)
from reminder.services import audit, audit_records
from reminder.services.daily_run import RunOptions, run_day
from tests.portfolio import Portfolio

D = date(2026, 12, 2)
NOW = datetime(2026, 12, 2, 12, tzinfo=UTC)
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def portfolio(engine: Engine) -> Engine:
    p = Portfolio()
    p.loan("L1", p.borrower("B1", phone="+12125550123"), first_due=D - timedelta(days=2), count=2)
    p.loan("L2", p.borrower("B2", consent_sms=False), first_due=D - timedelta(days=10), count=1)
    p.loan("L3", p.borrower("B3"), first_due=D - timedelta(days=120), count=1)
    p.loan("L4", "B1", first_due=D - timedelta(days=5), count=1)
    p.save(engine)
    return engine


def _run(engine: Engine, config: Config, day: date = D) -> dict[str, Any]:
    app = bootstrap(config, engine=engine, clock=FixedClock(NOW))
    return run_day(app, RunOptions(run_date=day, dispatch=False))


def _rows(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return conn.execute(select(audit_log).order_by(audit_log.c.id)).all()


def _verify(engine: Engine) -> audit.VerifyResult:
    with engine.connect() as conn:
        return audit.verify(conn)


def _some_events(engine: Engine, count: int = 6) -> None:
    with engine.begin() as conn:
        audit.append_many(conn, [
            {"kind": "send", "at": NOW + timedelta(seconds=i), "borrower_id": "B1",
             "loan_id": "L1", "message_id": i + 1,
             "detail": {"status": "sent", "provider_id": f"SM{i}", "amount": "12.50"}}
            for i in range(count)
        ])  # fmt: skip


def test_a_daily_run_appends_one_decision_per_message_row_and_a_placement_per_case(
    portfolio: Engine, config: Config
) -> None:
    _run(portfolio, config)
    rows = _rows(portfolio)
    with portfolio.connect() as conn:
        message_ids = list(conn.execute(select(messages.c.id).order_by(messages.c.id)).scalars())
        case_loans = list(conn.execute(select(cases.c.loan_id)).scalars())
    decisions = [row for row in rows if row.kind == "decision"]
    assert [row.message_id for row in decisions] == message_ids and message_ids
    assert {row.loan_id for row in rows if row.kind == "placement"} == set(case_loans) == {"L3"}
    suppressed = [row.detail for row in decisions if row.detail["status"] == "suppressed"]
    assert suppressed and all(d["reason"] == "no_consent" for d in suppressed)
    assert _verify(portfolio) == audit.VerifyResult(True, len(rows))


def test_a_case_ended_by_a_run_gets_a_placement_row_too(portfolio: Engine, config: Config) -> None:
    _run(portfolio, config)
    with portfolio.begin() as conn:
        conn.execute(insert(payments).values(
            payment_id="P1", loan_id="L3", paid_on=D, amount=Decimal("100.00"), source="ledger"))
    _run(portfolio, config, D + timedelta(days=1))
    placements = [row.detail for row in _rows(portfolio) if row.kind == "placement"]
    assert [(d["action"], d.get("reason")) for d in placements] == [
        ("placed", None), ("recalled", "paid_direct")]
    assert _verify(portfolio).ok


def test_a_rerun_of_the_same_day_appends_nothing(portfolio: Engine, config: Config) -> None:
    _run(portfolio, config)
    before = len(_rows(portfolio))
    _run(portfolio, config)
    assert len(_rows(portfolio)) == before
    _run(portfolio, config, D + timedelta(days=1))
    assert _verify(portfolio).ok and len(_rows(portfolio)) >= before


def test_the_hash_is_sha256_of_the_canonical_json_of_content_and_prev_hash(
    engine: Engine,
) -> None:
    _some_events(engine, 2)
    first, second = _rows(engine)
    content = {name: first._mapping[name] for name in
               ("id", "at", "kind", "borrower_id", "loan_id", "message_id", "detail")}  # fmt: skip
    content["prev_hash"] = audit.GENESIS
    expected = hashlib.sha256(audit.canonical(content).encode()).hexdigest()
    assert first.hash == expected and second.prev_hash == first.hash


def _set_raw(engine: Engine, row_id: int, column: str, value: Any) -> None:
    cast = "CAST(:v AS JSON)" if column == "detail" and engine.dialect.name != "sqlite" else ":v"
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE audit_log SET {column} = {cast} WHERE id = :id"),
                     {"v": value, "id": row_id})  # fmt: skip


def _raw(engine: Engine, row_id: int, column: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(
            text(f"SELECT CAST({column} AS TEXT) FROM audit_log WHERE id = :id"), {"id": row_id}
        ).scalar_one()


def _flip(value: str, position: int) -> str:
    old = value[position]
    new = "1" if old == "0" else "0" if old.isdigit() else "x" if old != "x" else "y"
    return value[:position] + new + value[position + 1 :]


@pytest.mark.parametrize(
    ("column", "position"),
    [("detail", -3), ("kind", 0), ("prev_hash", 10), ("hash", 63), ("borrower_id", 1),
     ("loan_id", 0), ("at", 18)],  # fmt: skip
)
def test_a_single_changed_byte_is_detected_and_the_row_named(
    engine: Engine, column: str, position: int
) -> None:
    _some_events(engine)
    assert _verify(engine).ok
    if column == "at" and engine.dialect.name != "sqlite":
        with engine.begin() as conn:  # a timestamp holds no bytes of ours: move it by 1 s
            conn.execute(text("UPDATE audit_log SET at = at + interval '1 second' WHERE id = 3"))
    else:
        _set_raw(engine, 3, column, _flip(_raw(engine, 3, column), position))
    result = _verify(engine)
    assert not result.ok
    assert result.first_broken_id == 3 and result.rows_checked == 2 and result.problem


def test_a_changed_message_id_is_detected(engine: Engine) -> None:
    _some_events(engine)
    with engine.begin() as conn:
        conn.execute(update(audit_log).where(audit_log.c.id == 4).values(message_id=40))
    assert _verify(engine).first_broken_id == 4


def test_the_same_detail_spelled_differently_is_detected(engine: Engine) -> None:
    _some_events(engine)
    spaced = json.dumps(json.loads(_raw(engine, 2, "detail")), sort_keys=True)  # ", " and ": "
    _set_raw(engine, 2, "detail", spaced)
    assert _verify(engine).first_broken_id == 2


def test_a_deleted_row_in_the_middle_is_detected(engine: Engine) -> None:
    _some_events(engine)
    with engine.begin() as conn:
        conn.execute(delete(audit_log).where(audit_log.c.id == 4))
    result = _verify(engine)
    assert (result.ok, result.first_broken_id, result.rows_checked) == (False, 5, 3)
    assert "missing" in (result.problem or "")


def test_a_deleted_row_replaced_by_a_recomputed_one_still_breaks_the_next(engine: Engine) -> None:
    """Rewriting a row with a fresh valid hash only moves the break to the row after it."""
    _some_events(engine)
    row = _rows(engine)[2]
    forged_detail = audit.canonical({"status": "failed"})
    forged = audit.row_hash(row.id, row.at.isoformat(), row.kind, row.borrower_id, row.loan_id,
                            row.message_id, forged_detail, row.prev_hash)  # fmt: skip
    _set_raw(engine, 3, "detail", forged_detail)
    _set_raw(engine, 3, "hash", forged)
    assert _verify(engine).first_broken_id == 4


def test_personal_data_and_unknown_kinds_are_refused(engine: Engine) -> None:
    with engine.begin() as conn, pytest.raises(ValueError, match="personal data"):
        audit.append(conn, "reply", borrower_id="B1", detail={"phone": "+12125550123"}, at=NOW)
    with engine.begin() as conn, pytest.raises(ValueError, match="unknown audit kind"):
        audit.append(conn, "gossip", at=NOW)
    assert _rows(engine) == []


def test_single_appends_in_one_transaction_after_a_rollback_and_a_savepoint_chain(
    engine: Engine,
) -> None:
    with engine.connect() as conn:
        with conn.begin() as transaction:
            audit.append(conn, "flag", borrower_id="B9", at=NOW)
            transaction.rollback()
        with conn.begin():
            for i in range(3):
                audit.append(conn, "status", loan_id="L1", detail={"i": i}, at=NOW)
            savepoint = conn.begin_nested()
            audit.append(conn, "status", loan_id="L1", detail={"i": "gone"}, at=NOW)
            savepoint.rollback()
            audit.append(conn, "status", loan_id="L1", detail={"i": 3}, at=NOW)
    rows = _rows(engine)
    assert [row.detail["i"] for row in rows] == [0, 1, 2, 3]
    assert _verify(engine) == audit.VerifyResult(True, 4)


def test_events_queued_on_commit_are_written_at_commit_and_dropped_on_rollback(
    engine: Engine,
) -> None:
    with engine.connect() as conn:
        with conn.begin() as transaction:
            audit_records.append_on_commit(conn, "flag", borrower_id="B9", at=NOW)
            transaction.rollback()
        with conn.begin():
            audit_records.append_on_commit(conn, "flag", borrower_id="B1", at=NOW,
                                           detail={"flag": "dispute"})  # fmt: skip
            count = select(func.count()).select_from(audit_log)
            assert conn.execute(count).scalar_one() == 0  # not before the commit
            audit.append(conn, "status", loan_id="L1", at=NOW)  # immediate: goes first
    assert [(row.kind, row.borrower_id) for row in _rows(engine)] == [
        ("status", None), ("flag", "B1")]
    with engine.begin() as conn, pytest.raises(ValueError, match="personal data"):
        audit_records.append_on_commit(conn, "flag", detail={"email": "x@example.com"}, at=NOW)
    assert _verify(engine) == audit.VerifyResult(True, 2)


def test_concurrent_appenders_keep_one_linear_chain(engine: Engine) -> None:
    def writer(n: int) -> None:
        for i in range(15):
            with engine.begin() as conn:
                audit.append(conn, "status", loan_id=f"L{n}", detail={"i": i}, at=NOW)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert _verify(engine) == audit.VerifyResult(True, 60)


def _ledger(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return [conn.execute(select(table).order_by(*table.primary_key.columns)).all()
                for table in (loans, installments, payments, cases)]  # fmt: skip


def _with_texts(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(update(messages).values(subject="Your loan", body="Hi Borrower B1, pay"))
        conn.execute(insert(replies), [
            {"channel": "sms", "borrower_id": "B1", "sender": "+12125550123", "body": "PAID",
             "intent": "paid", "received_at": NOW, "needs_person": True,
             "resolution_note": "called +12125550123, Borrower B1 confirmed"},
            {"channel": "sms", "borrower_id": "B2", "sender": "+12125550100", "body": "HELP",
             "intent": "help", "received_at": NOW, "needs_person": False,
             "resolution_note": None},
        ])  # fmt: skip


def test_forget_erases_personal_data_and_keeps_ledger_and_chain(
    portfolio: Engine, config: Config
) -> None:
    _run(portfolio, config)
    _with_texts(portfolio)
    ledger = _ledger(portfolio)
    with portfolio.begin() as conn:
        counts = forget_borrower(conn, "B1", NOW)
    assert counts["borrower"] == 1 and counts["messages"] >= 2 and counts["replies"] == 1
    with portfolio.connect() as conn:
        person = conn.execute(select(borrowers).where(borrowers.c.borrower_id == "B1")).one()
        texts = conn.execute(select(messages.c.borrower_id, messages.c.body)).all()
        answers = conn.execute(select(replies).order_by(replies.c.id)).all()
    assert (person.name, person.phone, person.email) == (None, None, None)
    assert all(body is None for who, body in texts if who == "B1")
    assert any(body for who, body in texts if who != "B1")
    assert (answers[0].sender, answers[0].body) == ("***", "[erased]")
    assert "+12125550123" not in answers[0].resolution_note
    assert "Borrower B1" not in answers[0].resolution_note
    assert (answers[1].sender, answers[1].body) == ("+12125550100", "HELP")
    assert _ledger(portfolio) == ledger
    assert _verify(portfolio).ok
    dumped = " ".join(json.dumps(row.detail) for row in _rows(portfolio))
    assert "+1212" not in dumped and "example.com" not in dumped and "Borrower" not in dumped


def test_a_second_forget_is_harmless(portfolio: Engine, config: Config) -> None:
    _run(portfolio, config)
    _with_texts(portfolio)
    with portfolio.begin() as conn:
        forget_borrower(conn, "B1", NOW)
    ledger = _ledger(portfolio)
    with portfolio.begin() as conn:
        counts = forget_borrower(conn, "B1", NOW + timedelta(hours=1))
    assert not any(counts.values())
    assert _ledger(portfolio) == ledger and _verify(portfolio).ok
    forgets = [row for row in _rows(portfolio) if row.kind == "forget"]
    assert [row.detail["nothing_left"] for row in forgets] == [False, True]


def test_export_loan_returns_the_loans_events_in_order(portfolio: Engine, config: Config) -> None:
    _run(portfolio, config)
    with portfolio.begin() as conn:
        audit.append(conn, "send", borrower_id="B1", loan_id="L1", message_id=1,
                     detail={"status": "sent", "provider_id": "SM1"}, at=NOW)  # fmt: skip
        audit.append(conn, "flag", borrower_id="B1", detail={"flag": "dispute"}, at=NOW)
        audit.append(conn, "status", borrower_id="B2", loan_id="L2", at=NOW)
        forget_borrower(conn, "B1", NOW)
    with portfolio.connect() as conn:
        events = audit.export_loan(conn, "L1")
    kinds = [event["kind"] for event in events]
    assert kinds[-3:] == ["send", "flag", "forget"] and set(kinds[:-3]) == {"decision"}
    assert [event["id"] for event in events] == sorted(event["id"] for event in events)
    assert all(event["loan_id"] in ("L1", None) for event in events)
    assert events[-3]["detail"] == {"status": "sent", "provider_id": "SM1"}


@pytest.fixture
def workdir(tmp_path: Path, database_url: str, portfolio: Engine) -> Path:
    text_ = (REPO / "config.toml").read_text(encoding="utf-8")
    text_ = text_.replace('url = "sqlite:///reminder.db"', f'url = "{database_url}"')
    (tmp_path / "config.toml").write_text(text_, encoding="utf-8")
    return tmp_path


def _cli(workdir: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli_app, ["--config", str(workdir / "config.toml"), *args])
    return result.exit_code, result.stdout


def test_cli_verify_export_and_forget_exit_codes(workdir: Path, portfolio: Engine) -> None:
    assert _cli(workdir, "run", "--date", D.isoformat(), "--json")[0] == 0
    code, out = _cli(workdir, "audit", "verify", "--json")
    assert code == 0 and json.loads(out)["ok"] is True
    assert json.loads(out)["head_hash"] == _rows(portfolio)[-1].hash
    code, out = _cli(workdir, "audit", "export", "--loan", "L3", "--json")
    assert code == 0 and "placement" in [e["kind"] for e in json.loads(out)["events"]]
    assert _cli(workdir, "audit", "export", "--loan", "L1")[0] == 0
    assert _cli(workdir, "audit", "export", "--loan", "NOPE")[0] == 2
    code, out = _cli(workdir, "forget", "B1", "--json")
    assert code == 0 and json.loads(out)["erased"]["borrower"] == 1
    assert _cli(workdir, "forget", "NOPE")[0] == 2
    assert _cli(workdir, "audit", "verify")[0] == 0
    with portfolio.begin() as conn:
        conn.execute(update(audit_log).where(audit_log.c.id == 2).values(kind="send"))
    code, out = _cli(workdir, "audit", "verify", "--json")
    assert code == 1 and json.loads(out)["first_broken_id"] == 2
    assert _cli(workdir, "audit", "verify")[0] == 1


def test_verify_of_an_empty_log_is_ok(engine: Engine) -> None:
    assert _verify(engine) == audit.VerifyResult(True, 0)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(audit_log)).scalar_one() == 0
