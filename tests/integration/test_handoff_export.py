"""Placement and recall files on SQLite and PostgreSQL: content, manifest, exactly once."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from integrations.folder_transport import FolderTransport
from reminder.bootstrap import App, bootstrap
from reminder.clock import FixedClock
from reminder.config import Config
from reminder.db.tables import cases
from reminder.errors import TransportError
from reminder.ports import TransportResult
from reminder.services.daily_run import RunOptions, run_day
from reminder.services.handoff_export import PLACEMENT_COLUMNS, export
from reminder.services.itemization import itemize
from tests.portfolio import Portfolio

D0 = date(2026, 3, 2)
PLACED = D0 + timedelta(days=95)


class Crash(BaseException):
    """Stands for the process dying (not an error the exporter may catch)."""


class Recording:
    """A folder transport that can fail or crash on the n-th delivery."""

    def __init__(self, folder: Path, fail_on: int | None = None, crash_on: int | None = None):
        self.inner = FolderTransport(folder)
        self.calls: list[str] = []
        self.fail_on, self.crash_on = fail_on, crash_on

    def deliver(self, file_name: str, content: bytes) -> TransportResult:
        self.calls.append(file_name)
        if len(self.calls) == self.fail_on:
            raise TransportError("connection reset by peer")
        result = self.inner.deliver(file_name, content)
        if len(self.calls) == self.crash_on:
            raise Crash()
        return result


def _app(engine: Engine, config: Config, day: date) -> App:
    clock = FixedClock(datetime.combine(day, datetime.min.time(), tzinfo=UTC) + timedelta(hours=15))
    return bootstrap(config, engine=engine, clock=clock)


def _portfolio(engine: Engine, count: int, prefix: str = "L", first_due: date = D0) -> None:
    p = Portfolio()
    for i in range(count):
        p.loan(f"{prefix}{i:03}", p.borrower(f"B{prefix}{i:03}"), first_due=first_due)
    p.save(engine)


def _place(engine: Engine, config: Config, day: date) -> None:
    run_day(_app(engine, config, day), RunOptions(run_date=day, dispatch=False))


def _one_agency(config: Config) -> Config:
    return config.model_copy(update={"agencies": config.agencies[:1]})


def _read(folder: Path) -> dict[str, list[dict[str, str]]]:
    return {p.name: list(csv.DictReader(io.StringIO(p.read_text())))
            for p in sorted(folder.glob("*.csv"))}  # fmt: skip


def test_the_file_and_manifest_describe_each_case_from_the_ledger(
    engine: Engine, config: Config, tmp_path: Path
) -> None:
    config = _one_agency(config)
    p = Portfolio()
    p.loan("L1", p.borrower("B1", timezone="Europe/Madrid", locale="es"), first_due=D0)
    p.pay("P1", "L1", D0 + timedelta(days=40), "120.00")
    p.pay("P0", "L1", D0 - timedelta(days=2), "30.00")
    p.save(engine)
    _place(engine, config, PLACED + timedelta(days=30))  # dpd 95 after the payments
    folder = tmp_path / "out"
    report = export(_app(engine, config, PLACED + timedelta(days=31)),
                    {"acme": FolderTransport(folder)})  # fmt: skip
    assert [f.row_count for f in report.files] == [1] and not report.failed
    (name, rows), = _read(folder).items()
    assert list(rows[0]) == list(PLACEMENT_COLUMNS)
    row = rows[0]
    assert {k: row[k] for k in ("case_id", "balance", "dpd", "oldest_due_date", "timezone",
                                "locale", "last_payment_date", "last_payment_amount",
                                "itemization_date", "itemization_balance", "payments_since",
                                "interest_since", "fees_since", "credits_since",
                                "current_balance", "lender_reference")} == {
        "case_id": "C20260705-L1", "balance": "150.00", "dpd": "95",
        "oldest_due_date": "2026-04-01", "timezone": "Europe/Madrid", "locale": "es",
        "last_payment_date": "2026-04-11", "last_payment_amount": "120.00",
        "itemization_date": "2026-04-11", "itemization_balance": "150.00",
        "payments_since": "0.00", "interest_since": "0.00", "fees_since": "0.00",
        "credits_since": "0.00", "current_balance": "150.00", "lender_reference": "L1",
    }  # fmt: skip
    manifest = json.loads((folder / name.replace(".csv", ".manifest.json")).read_text())
    content = (folder / name).read_bytes()
    assert manifest["sha256"] == hashlib.sha256(content).hexdigest()
    assert (manifest["agency"], manifest["file_name"], manifest["row_count"],
            manifest["total_balance"]) == ("acme", name, 1, "150.00")  # fmt: skip
    assert manifest["created_at"].startswith("2026-07-06T15:00")
    assert not list(folder.glob(".*"))  # no temporary left behind


def test_itemization_without_payment_starts_at_the_first_missed_installment() -> None:
    schedule = [(D0, Decimal("100.00")), (D0 + timedelta(days=30), Decimal("100.00"))]
    item = itemize(schedule, [], D0 + timedelta(days=95))
    assert (item.itemization_date, item.balance_then, item.current_balance) == (
        D0, Decimal("200.00"), Decimal("200.00"))
    item = itemize(schedule, [(D0 + timedelta(days=3), Decimal("60.00")),
                              (D0 + timedelta(days=99), Decimal("5.00"))], D0 + timedelta(days=95))
    assert (item.itemization_date, item.balance_then, item.payments_since,
            item.last_payment_amount) == (D0 + timedelta(days=3), Decimal("140.00"),
                                          Decimal("0.00"), Decimal("60.00"))  # fmt: skip


def test_a_failed_upload_leaves_cases_unexported_and_the_rerun_sends_the_same_file(
    engine: Engine, config: Config, tmp_path: Path
) -> None:
    config = _one_agency(config)
    _portfolio(engine, 5)
    _place(engine, config, PLACED)
    folder = tmp_path / "out"
    report = export(_app(engine, config, PLACED), {"acme": Recording(folder, fail_on=1)})
    assert report.failed and not report.files and not list(folder.glob("*.csv"))
    failed_name = report.failed[0]["file"]
    with engine.connect() as conn:
        assert conn.execute(select(cases.c.exported_at)).scalars().all() == [None] * 5
    _portfolio(engine, 3, prefix="M")  # new cases placed before the retry go to a new file
    _place(engine, config, PLACED + timedelta(days=1))
    later = _app(engine, config, PLACED + timedelta(days=1))
    report = export(later, {"acme": Recording(folder)})
    files = _read(folder)
    assert [f.row_count for f in report.files] == [5, 3]
    assert report.files[0].file_name == failed_name
    ids = [r["case_id"] for rows in files.values() for r in rows]
    assert len(ids) == len(set(ids)) == 8


@pytest.mark.parametrize("crash_on", [1, 2])
def test_a_crash_after_the_rename_rewrites_the_same_name_on_rerun(
    engine: Engine, config: Config, tmp_path: Path, crash_on: int
) -> None:
    config = _one_agency(config)
    _portfolio(engine, 4)
    _place(engine, config, PLACED)
    folder = tmp_path / "out"
    with pytest.raises(Crash):
        export(_app(engine, config, PLACED), {"acme": Recording(folder, crash_on=crash_on)})
    first = _read(folder)
    with engine.connect() as conn:
        assert set(conn.execute(select(cases.c.exported_at)).scalars()) == {None}
    _portfolio(engine, 2, prefix="N")
    _place(engine, config, PLACED + timedelta(days=2))
    export(_app(engine, config, PLACED + timedelta(days=2)), {"acme": Recording(folder)})
    files = _read(folder)
    assert len(files) == 2 and files[next(iter(first))] == first[next(iter(first))]
    ids = [r["case_id"] for rows in files.values() for r in rows]
    assert len(ids) == len(set(ids)) == 6
    with engine.connect() as conn:
        rows = conn.execute(select(cases.c.export_file, cases.c.exported_at)).all()
    assert all(at is not None for _, at in rows)
    assert {name for name, _ in rows} == set(files)
    again = export(_app(engine, config, PLACED + timedelta(days=3)), {"acme": Recording(folder)})
    assert again.files == [] and len(_read(folder)) == 2


def test_recalled_cases_get_one_recall_file(
    engine: Engine, config: Config, tmp_path: Path
) -> None:
    config = _one_agency(config)
    _portfolio(engine, 3)
    _place(engine, config, PLACED)
    folder = tmp_path / "out"
    export(_app(engine, config, PLACED), {"acme": FolderTransport(folder)})
    from reminder.db.tables import payments

    with engine.begin() as conn:
        conn.execute(payments.insert().values(payment_id="P", loan_id="L001",
                                              paid_on=PLACED + timedelta(days=1),
                                              amount=Decimal("300.00"), source="ledger"))
    _place(engine, config, PLACED + timedelta(days=2))
    for _ in range(2):
        export(_app(engine, config, PLACED + timedelta(days=2)), {"acme": FolderTransport(folder)})
    recalls = {n: r for n, r in _read(folder).items() if "_recalls_" in n}
    (rows,) = recalls.values()
    assert [(r["case_id"], r["reason"], r["recalled_on"]) for r in rows] == [
        ("C20260605-L001", "paid_direct", "2026-06-07")]


def test_the_export_and_report_commands(
    engine: Engine, config: Config, tmp_path: Path, database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from typer.testing import CliRunner

    from reminder.cli import app as cli

    _portfolio(engine, 6)
    _place(engine, config, PLACED)
    repo_config = Path(__file__).resolve().parents[2] / "config.toml"
    config_path = tmp_path / "config.toml"
    config_path.write_text(repo_config.read_text())
    monkeypatch.setenv("REMINDER_DATABASE_URL", database_url)
    runner = CliRunner()
    result = runner.invoke(cli, ["--config", str(config_path), "handoff", "export", "--json"])
    assert result.exit_code == 0, result.output
    files = json.loads(result.stdout)["files"]
    assert sorted(f["agency"] for f in files) == ["acme", "beacon"]
    assert sum(f["row_count"] for f in files) == 6
    for sent in files:
        assert (tmp_path / "placements" / sent["agency"] / sent["file_name"]).is_file()
    again = runner.invoke(cli, ["--config", str(config_path), "handoff", "export", "--json"])
    assert json.loads(again.stdout) == {"files": [], "failed": []}
    report = runner.invoke(cli, ["--config", str(config_path), "handoff", "report", "--json"])
    assert report.exit_code == 0, report.output
    agencies = json.loads(report.stdout)["agencies"]
    assert sum(a["cases_open"] for a in agencies) == 6
    text = runner.invoke(cli, ["--config", str(config_path), "handoff", "report"])
    assert text.exit_code == 0 and "acme" in text.stdout


def test_export_names_the_missing_credential_and_exits_2(
    engine: Engine, tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from reminder.cli import app as cli

    repo_config = Path(__file__).resolve().parents[2] / "config.toml"
    text = repo_config.read_text().replace(
        'transport = "folder"\npath = "placements/beacon"',
        'transport = "https"\nurl = "https://beacon.example/in"\ntoken_env = "BEACON_PUSH_TOKEN"')
    assert "BEACON_PUSH_TOKEN" in text
    config_path = tmp_path / "config.toml"
    config_path.write_text(text)
    monkeypatch.setenv("REMINDER_DATABASE_URL", database_url)
    monkeypatch.delenv("BEACON_PUSH_TOKEN", raising=False)
    result = CliRunner().invoke(cli, ["--config", str(config_path), "handoff", "export"])
    assert result.exit_code == 2
    assert "BEACON_PUSH_TOKEN" in result.stderr


def test_two_exports_at_once_never_put_a_case_in_two_files(
    engine: Engine, config: Config, tmp_path: Path
) -> None:
    import threading

    config = _one_agency(config)
    _portfolio(engine, 600)
    _place(engine, config, PLACED)
    folder = tmp_path / "out"
    errors: list[BaseException] = []

    def one_export() -> None:
        try:
            export(_app(engine, config, PLACED), {"acme": FolderTransport(folder)})
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=one_export) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    ids = [r["case_id"] for rows in _read(folder).values() for r in rows]
    assert len(ids) == len(set(ids)) == 600
    with engine.connect() as conn:
        assert None not in set(conn.execute(select(cases.c.exported_at)).scalars())
