"""`reminder handoff import`: per-row checks, effects and idempotency on both databases."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from typer.testing import CliRunner

from reminder.bootstrap import bootstrap
from reminder.cli import app as cli
from reminder.clock import FixedClock
from reminder.config import Config
from reminder.db.tables import cases, contact_flags, outcomes, payments
from reminder.services.daily_run import RunOptions, run_day
from reminder.services.outcomes import ingest, payment_id, read_outcome_file
from tests.portfolio import Portfolio

PLACED = date(2026, 9, 1)
TODAY = date(2026, 11, 30)


def _placed_cases(engine: Engine, config: Config) -> dict[str, list[str]]:
    p = Portfolio()
    for i in range(12):
        p.loan(f"L{i:02}", p.borrower(f"B{i:02}"), first_due=PLACED - timedelta(days=95))
    p.save(engine)
    clock = FixedClock(datetime(2026, 9, 1, 12, tzinfo=UTC))
    run_day(bootstrap(config, engine=engine, clock=clock), RunOptions(PLACED, dispatch=False))
    found: dict[str, list[str]] = {}
    with engine.connect() as conn:
        for case_id, agency in conn.execute(select(cases.c.case_id, cases.c.agency_id)
                                            .order_by(cases.c.case_id)):  # fmt: skip
            found.setdefault(agency, []).append(case_id)
    return found


def _outcome_file(tmp_path: Path, acme: list[str], beacon: list[str]) -> Path:
    lines = [
        "case_id,outcome,amount,date,agency_ref,note",
        f"{acme[0]},payment,120.50,2026-10-01,R1,first instalment",      # 2 ok
        f"{acme[1]},dispute,,2026-10-02,R2,borrower disputes",          # 3 ok
        f"{acme[0]},payment,120.50,2026-10-01,R1,first instalment",      # 4 duplicate
        "C-nope,payment,10.00,2026-10-03,R3,",                          # 5 unknown case
        f"{beacon[0]},payment,10.00,2026-10-03,R4,",                    # 6 other agency
        f"{acme[2]},payment,-5.00,2026-10-03,R5,",                      # 7 negative
        f"{acme[2]},payment,5.00,2027-01-01,R6,",                       # 8 future
        f"{acme[2]},settled,5.00,2026-10-03,R7,",                       # 9 unknown outcome
        f"{acme[3]},uncollectible,,2026-10-04,R8,",                     # 10 ok
        f"{acme[4]},deceased,,2026-10-05,R9,",                          # 11 ok
        f"{acme[2]},payment,5.001,2026-10-03,R10,",                     # 12 3 decimals
        f"{acme[2]},payment,5.00,2026-08-30,R11,",                      # 13 before placement
        f"{acme[4]},bankruptcy,,2026-08-01,R12,filed before placement",  # 14 ok
    ]  # fmt: skip
    path = tmp_path / "outcomes.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


EXPECTED_REJECTIONS = [
    {"line": 5, "column": "case_id", "reason": "unknown case"},
    {"line": 6, "column": "case_id", "reason": "the case is placed with another agency"},
    {"line": 7, "column": "amount", "reason": "the amount must not be negative"},
    {"line": 8, "column": "date", "reason": "2027-01-01 is in the future"},
    {"line": 9, "column": "outcome", "reason": "unknown outcome 'settled'"},
    {"line": 12, "column": "amount", "reason": "at most 2 decimal places"},
    {"line": 13, "column": "date", "reason": "a payment before the case was placed (2026-09-01)"},
]


def test_rows_are_judged_one_by_one_and_a_second_import_changes_nothing(
    engine: Engine, config: Config, tmp_path: Path
) -> None:
    placed = _placed_cases(engine, config)
    acme, beacon = placed["acme"], placed["beacon"]
    path = _outcome_file(tmp_path, acme, beacon)
    app = bootstrap(config, engine=engine, clock=FixedClock(datetime(2026, 11, 30, 17, tzinfo=UTC)))
    first = ingest(app, "acme", read_outcome_file(path)).as_dict()
    assert (first["imported"], first["unchanged"]) == (5, 1)
    assert first["rejected"] == EXPECTED_REJECTIONS
    second = ingest(app, "acme", read_outcome_file(path)).as_dict()
    assert (second["imported"], second["unchanged"]) == (0, 6)
    assert second["rejected"] == EXPECTED_REJECTIONS
    with engine.connect() as conn:
        paid = conn.execute(select(payments).where(payments.c.source == "agency")).mappings().all()
        flags = conn.execute(select(contact_flags.c.kind, contact_flags.c.loan_id)
                             .order_by(contact_flags.c.kind)).all()  # fmt: skip
        status = dict(conn.execute(select(cases.c.case_id, cases.c.status)).all())
        stored = conn.execute(select(outcomes.c.agency_ref).order_by(outcomes.c.id)).scalars()
        assert list(stored) == ["R1", "R2", "R8", "R9", "R12"]
    assert [(p["payment_id"], p["amount"], p["paid_on"]) for p in paid] == [
        (payment_id("acme", "R1"), Decimal("120.50"), date(2026, 10, 1))]
    assert [tuple(f) for f in flags] == [
        ("bankruptcy", None), ("deceased", None), ("dispute", acme[1].split("-", 1)[1])]
    assert status[acme[3]] == "closed" and status[acme[0]] == "open"


def test_a_reused_agency_ref_with_different_content_is_rejected(
    engine: Engine, config: Config
) -> None:
    acme = _placed_cases(engine, config)["acme"]
    app = bootstrap(config, engine=engine, clock=FixedClock(datetime(2026, 11, 30, tzinfo=UTC)))
    row = {"case_id": acme[0], "outcome": "payment", "amount": "10", "date": "2026-10-01",
           "agency_ref": "X"}  # fmt: skip
    assert ingest(app, "acme", [(1, row)]).imported == 1
    report = ingest(app, "acme", [(1, row | {"amount": "11"}), (2, row | {"note": "again"})])
    assert (report.imported, report.unchanged) == (0, 1)
    assert [r.as_dict() for r in report.rejected] == [
        {"line": 1, "column": "agency_ref",
         "reason": "agency_ref already used for a different outcome"}]  # fmt: skip


@pytest.fixture
def cli_env(engine: Engine, database_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("REMINDER_DATABASE_URL", database_url)
    return database_url


def test_the_command_prints_the_summary_and_exits_1_on_a_rejected_row(
    engine: Engine, config: Config, tmp_path: Path, cli_env: str
) -> None:
    placed = _placed_cases(engine, config)
    path = _outcome_file(tmp_path, placed["acme"], placed["beacon"])
    config_path = Path(__file__).resolve().parents[2] / "config.toml"
    runner = CliRunner()
    result = runner.invoke(cli, ["--config", str(config_path), "handoff", "import", "acme",
                                 str(path), "--json"])  # fmt: skip
    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout)
    assert set(summary) == {"imported", "unchanged", "rejected"}
    assert summary["rejected"] == EXPECTED_REJECTIONS
    clean = tmp_path / "clean.csv"
    clean.write_text("\n".join(path.read_text().splitlines()[:4]) + "\n")
    result = runner.invoke(cli, ["--config", str(config_path), "handoff", "import", "acme",
                                 str(clean), "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"imported": 0, "unchanged": 3, "rejected": []}
    result = runner.invoke(cli, ["--config", str(config_path), "handoff", "import", "zeta",
                                 str(clean)])  # fmt: skip
    assert result.exit_code == 2
    report = runner.invoke(cli, ["--config", str(config_path), "handoff", "report", "--json"])
    assert report.exit_code == 0, report.output
    acme = next(r for r in json.loads(report.stdout)["agencies"] if r["agency"] == "acme")
    assert (acme["collected"], acme["commission_owed"]) == ("120.50", "30.13")


def test_json_lines_files_are_read_with_their_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "outcomes.jsonl"
    path.write_text('{"case_id": "C1", "outcome": "promise", "date": "2026-10-01",'
                    ' "agency_ref": "J1"}\n\n[1, 2]\n')  # fmt: skip
    rows = read_outcome_file(path)
    assert [line for line, _ in rows] == [1, 3]
    assert rows[0][1]["agency_ref"] == "J1"
