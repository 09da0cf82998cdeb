"""The command line as a user runs it: JSON outputs, exit codes, reruns, dry runs, the demo."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from reminder.cli import app
from reminder.db.engine import make_engine
from reminder.db.tables import messages
from tests.portfolio import Portfolio

REPO = Path(__file__).resolve().parents[2]
D = date(2026, 12, 2)


@pytest.fixture
def workdir(tmp_path: Path, database_url: str) -> Path:
    """A lender's folder: the default config, pointed at the test database."""
    text = (REPO / "config.toml").read_text(encoding="utf-8")
    text = text.replace('url = "sqlite:///reminder.db"', f'url = "{database_url}"')
    (tmp_path / "config.toml").write_text(text, encoding="utf-8")
    engine = make_engine(database_url)
    p = Portfolio()
    p.loan("L1", p.borrower("B1"), first_due=D - timedelta(days=2), count=1)
    p.loan("L2", p.borrower("B2", consent_sms=False), first_due=D - timedelta(days=10), count=1)
    p.loan("L3", p.borrower("B3"), first_due=D - timedelta(days=120), count=1)
    p.save(engine)
    engine.dispose()
    return tmp_path


def cli(workdir: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["--config", str(workdir / "config.toml"), *args])
    return result.exit_code, result.stdout


def test_run_json_prints_one_summary_document_with_the_contract_keys(workdir: Path) -> None:
    code, out = cli(workdir, "run", "--date", D.isoformat(), "--json")
    assert code == 0
    summary = json.loads(out)
    assert set(summary) >= {"date", "stages", "planned", "suppressed", "sent", "failed", "placed"}
    assert summary["date"] == "2026-12-02"
    assert summary["stages"]["early"] == 1 and summary["stages"]["mid"] == 1
    assert summary["suppressed"] == {"no_consent": 1}
    assert summary["planned"] == 3  # L1 sms+email, L2 email
    assert summary["placed"] == 1  # L3, 120 days past due


def test_a_second_run_of_the_same_day_reports_the_same_and_creates_nothing(
    workdir: Path, database_url: str
) -> None:
    _, first = cli(workdir, "run", "--date", D.isoformat(), "--json")
    engine = make_engine(database_url)
    with engine.connect() as conn:
        before = conn.execute(select(func.count()).select_from(messages)).scalar_one()
    _, second = cli(workdir, "run", "--date", D.isoformat(), "--json")
    with engine.connect() as conn:
        after = conn.execute(select(func.count()).select_from(messages)).scalar_one()
    engine.dispose()
    assert json.loads(first) == json.loads(second)
    assert before == after == 4


def test_a_dry_run_reports_the_plan_and_writes_nothing(workdir: Path, database_url: str) -> None:
    code, out = cli(workdir, "run", "--date", D.isoformat(), "--dry-run", "--json")
    assert code == 0
    assert json.loads(out)["planned"] == 3
    engine = make_engine(database_url)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(messages)).scalar_one() == 0
    engine.dispose()


def test_messages_json_lists_rows_with_the_contract_fields(workdir: Path) -> None:
    cli(workdir, "run", "--date", D.isoformat())
    code, out = cli(workdir, "messages", "--date", D.isoformat(), "--json")
    assert code == 0
    rows = json.loads(out)
    assert {tuple(sorted(row)) for row in rows} >= {tuple(sorted(
        ["loan_id", "run_date", "stage", "channel", "status", "reason", "not_before", "body",
         "provider_id"]))}
    suppressed = [row for row in rows if row["status"] == "suppressed"]
    assert [(row["loan_id"], row["channel"], row["reason"]) for row in suppressed] == [
        ("L2", "sms", "no_consent")]
    assert all(row["not_before"].endswith("-05:00") for row in rows)


def test_explain_names_stage_dpd_balance_and_the_rules_that_apply(workdir: Path) -> None:
    code, out = cli(workdir, "explain", "L2", "--date", D.isoformat(), "--json")
    assert code == 0
    explained = json.loads(out)
    assert (explained["stage"], explained["dpd"], explained["overdue_balance"]) == (
        "mid", 10, "100.00")
    assert {"channel": "sms", "rule": "no_consent", "applies": True,
            "text": "the borrower gave no consent for this channel"} in explained["rules"]


def test_explain_of_an_unknown_loan_exits_2(workdir: Path) -> None:
    code, _ = cli(workdir, "explain", "NOPE")
    assert code == 2


def test_a_bad_config_exits_2_naming_the_field(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('[run]\ntimezone = "Mars/Olympus"\n')
    result = CliRunner().invoke(app, ["--config", str(tmp_path / "config.toml"), "init"])
    assert result.exit_code == 2
    assert "run.timezone" in result.output


def test_the_console_script_runs_as_installed(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-c", "from reminder.cli import main; main()", "--help"],
        capture_output=True, text=True, cwd=tmp_path, timeout=60,
    )
    assert completed.returncode == 0
    for command in ("init", "import", "run", "messages", "explain", "demo", "serve"):
        assert command in completed.stdout


def test_the_demo_replays_days_on_an_empty_embedded_database(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-c", "from reminder.cli import main; main()",
         "demo", "--borrowers", "150", "--days", "4", "--json"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
        env={**__import__("os").environ, "REMINDER_DATABASE_URL": ""},
    )
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout)
    assert report["portfolio"]["borrowers"] == 150
    assert len(report["days"]) == 4
    assert sum(day["sent"] for day in report["days"]) > 0
    assert (tmp_path / "reminder.db").exists()
    assert any((tmp_path / "outbox").rglob("*.txt"))


def test_a_template_naming_an_unknown_variable_stops_the_run_before_anything_is_sent(
    workdir: Path
) -> None:
    broken = workdir / "templates" / "sms" / "en"
    broken.mkdir(parents=True)
    (broken / "early.txt").write_text("Hi {{ borrower.nickname }}, reply STOP to opt out\n")
    code, _ = cli(workdir, "run", "--date", D.isoformat(), "--json")
    assert code == 2
