"""Development aid, used only until the first release: rewrite revision 0001 from tables.py.

Until a database exists in the wild, the schema is one initial revision. After the first
release every change must be a new Alembic revision instead (STYLE.md habit 10).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from alembic import command

from reminder.db.engine import make_engine
from reminder.db.migrate import MIGRATIONS, alembic_config

if __name__ == "__main__":
    for old in (MIGRATIONS / "versions").glob("0001_*.py"):
        old.unlink()
    with tempfile.TemporaryDirectory() as folder:
        engine = make_engine(f"sqlite:///{Path(folder) / 'empty.db'}")
        command.revision(
            alembic_config(engine), message="initial schema", autogenerate=True, rev_id="0001"
        )
        engine.dispose()
