"""`reminder import` as a user runs it: one JSON document on stdout, exit codes 0, 1 and 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BORROWERS = "borrower_id,name,phone,email\nB1,Ann Lee,(212) 555-0100,ann@example.com\n"


def reminder(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m reminder --config <workdir>/config.toml ARGS`, in the lender's folder."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("REMINDER_DATABASE_URL", "REMINDER_CONFIG")
    }
    return subprocess.run(
        [sys.executable, "-m", "reminder", "--config", str(workdir / "config.toml"), *args],
        capture_output=True,
        text=True,
        cwd=workdir,
        env=env,
        timeout=120,
    )


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A folder with a minimal config and an initialised SQLite database."""
    (tmp_path / "config.toml").write_text('[database]\nurl = "sqlite:///x.db"\n')
    initialised = reminder(tmp_path, "init")
    assert initialised.returncode == 0, initialised.stderr
    return tmp_path


def test_a_clean_file_exits_0_and_prints_exactly_one_json_document(workdir: Path) -> None:
    (workdir / "borrowers.csv").write_text(BORROWERS)
    result = reminder(workdir, "import", "borrowers", "borrowers.csv", "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)  # the whole of stdout is one document
    assert document == {
        "imported": 1,
        "unchanged": 0,
        "rejected": [],
        "file": "borrowers.csv",
        "kind": "borrowers",
    }
    again = json.loads(reminder(workdir, "import", "borrowers", "borrowers.csv", "--json").stdout)
    assert (again["imported"], again["unchanged"]) == (0, 1)


def test_a_rejected_row_exits_1_and_lists_line_column_and_reason(workdir: Path) -> None:
    (workdir / "borrowers.csv").write_text(BORROWERS + "B2,Bob,555,\nB3,Cy,,cy@example.com\n")
    result = reminder(workdir, "import", "borrowers", "borrowers.csv", "--json")
    assert result.returncode == 1
    document = json.loads(result.stdout)
    assert (document["imported"], document["unchanged"]) == (2, 0)
    assert document["rejected"] == [
        {"line": 3, "column": "phone", "reason": "'555' is not a valid phone number"}
    ]


def test_jsonl_is_chosen_by_extension_or_by_format_option(workdir: Path) -> None:
    record = json.dumps({"borrower_id": "B1", "name": "Ann", "phone": "+12125550100"})
    (workdir / "b.ndjson").write_text(record + "\n")
    (workdir / "b.txt").write_text(record + "\n")
    by_extension = reminder(workdir, "import", "borrowers", "b.ndjson", "--json")
    by_option = reminder(workdir, "import", "borrowers", "b.txt", "--format", "jsonl", "--json")
    assert (by_extension.returncode, by_option.returncode) == (0, 0)
    assert json.loads(by_option.stdout)["unchanged"] == 1


@pytest.mark.parametrize(
    ("args", "file_text", "named"),
    [
        (("borrowers", "missing.csv"), None, "missing.csv"),
        (("people", "b.csv"), BORROWERS, "people"),
        (("loans", "b.csv"), BORROWERS, "loan_id"),
        (("borrowers", "b.csv", "--format", "xml"), BORROWERS, "--format"),
    ],
    ids=["unreadable file", "unknown kind", "missing required header", "unknown format"],
)
def test_an_unusable_file_or_argument_exits_2_naming_it_with_nothing_on_stdout(
    workdir: Path, args: tuple[str, ...], file_text: str | None, named: str
) -> None:
    if file_text is not None:
        (workdir / "b.csv").write_text(file_text)
    result = reminder(workdir, "import", *args, "--json")
    assert result.returncode == 2
    assert result.stdout == ""
    assert named in result.stderr


def test_without_json_a_summary_and_the_rejections_are_printed_without_a_progress_bar(
    workdir: Path,
) -> None:
    (workdir / "borrowers.csv").write_text(BORROWERS + "B2,Bob,,not-an-email\n")
    result = reminder(workdir, "import", "borrowers", "borrowers.csv")
    assert result.returncode == 1
    assert result.stdout.startswith("borrowers.csv: 1 imported, 0 unchanged, 1 row rejected")
    assert "borrowers.csv:3" in result.stderr and "email" in result.stderr
    assert "\r" not in result.stdout + result.stderr  # no bar when not on a terminal


def test_a_database_never_initialised_exits_2_pointing_at_reminder_init(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('[database]\nurl = "sqlite:///x.db"\n')
    (tmp_path / "borrowers.csv").write_text(BORROWERS)
    result = reminder(tmp_path, "import", "borrowers", "borrowers.csv", "--json")
    assert (result.returncode, result.stdout) == (2, "")
    assert "reminder init" in result.stderr
