"""Alembic revisions: the migrated schema is the declared one, and upgrades keep data usable."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, select

from reminder.config import Config
from reminder.db.engine import make_engine
from reminder.db.migrate import alembic_config, upgrade_to_head
from reminder.db.tables import metadata, stale_loans
from reminder.services.evaluation import evaluated_day, loan_state
from tests.portfolio import Portfolio

D = date(2026, 12, 2)


def test_the_migrated_schema_is_the_one_the_code_declares(engine: Engine) -> None:
    with engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), metadata)
    assert differences == []


def test_upgrading_a_database_with_loans_evaluates_them_all_on_the_next_run(
    tmp_path: Path, config: Config
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    command.upgrade(alembic_config(engine), "0001")  # a database from before loan_balances
    p = Portfolio()
    p.loan("L1", p.borrower("B1"), first_due=D - timedelta(days=12), count=2)
    p.loan("L2", p.borrower("B2"), first_due=D + timedelta(days=20), count=2)
    p.save(engine)
    upgrade_to_head(engine)
    with engine.connect() as conn:
        assert set(conn.execute(select(stale_loans.c.loan_id)).scalars()) == {"L1", "L2"}
    with engine.begin() as conn, evaluated_day(conn, config, D):
        state = {row.loan_id: row.dpd for row in conn.execute(loan_state(config, D))}
    assert state == {"L1": 12}
    engine.dispose()
