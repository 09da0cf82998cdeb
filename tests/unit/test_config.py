"""config.toml validation: a bad file names the field; the shipped default is valid."""

from __future__ import annotations

from pathlib import Path

import pytest

from reminder.config import load_config, parse_config
from reminder.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]

STAGES = """
[[stages]]
name = "early"
dpd = [1, 7]
every_days = 3
channels = ["sms"]
"""


def _load(tmp_path: Path, text: str) -> object:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return load_config(path)


def test_the_shipped_default_config_is_valid() -> None:
    config = load_config(REPO / "config.toml")
    assert [stage.name for stage in config.stages] == ["upcoming", "early", "mid", "late",
                                                       "handoff"]
    assert config.policy.caps["voice"] == (7, 7)


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        (STAGES + '\n[[stages]]\nname = "mid"\ndpd = [5, 30]\n', "stages[1].dpd", "overlaps"),
        (STAGES.replace('["sms"]', '["fax"]'), "stages[0].channels[0]", "'sms'"),
        ('[run]\ntime = "7 am"\n', "run.time", "HH:MM"),
        ('[run]\ntimezone = "Mars/Olympus"\n', "run.timezone", "unknown IANA timezone"),
        ('[policy]\ncontact_window = ["21:00", "08:00"]\n', "policy.contact_window", "start"),
        ('[policy]\nholidays = "XX"\n', "policy.holidays", "no public-holiday calendar"),
        ("[policy]\npromise_grace_days = -1\n", "policy.promise_grace_days", "greater"),
        (STAGES.replace("[1, 7]", "[7, 1]"), "stages[0].dpd", "low <= high"),
        ('[channels.fax]\nprovider = "outbox"\n', "channels.fax", "'sms'"),
        ("[database]\nurl = 3\n", "database.url", "string"),
        ("[surprise]\nkey = 1\n", "surprise", "not permitted"),
        ("[[stages]\n", "(syntax)", ""),
    ],
)
def test_a_bad_config_raises_an_error_naming_the_field(
    tmp_path: Path, text: str, field: str, words: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, text)
    assert caught.value.field == field
    assert words in caught.value.problem


def test_a_relative_sqlite_url_is_resolved_against_the_config_folder(tmp_path: Path) -> None:
    config = parse_config({"database": {"url": "sqlite:///data/r.db"}}, tmp_path, "c.toml")
    assert config.database_url == f"sqlite:///{(tmp_path / 'data' / 'r.db').resolve()}"


def test_the_environment_overrides_the_database_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REMINDER_DATABASE_URL", "postgresql://db.example/reminder")
    config = parse_config({}, tmp_path, "c.toml")
    assert config.database_url == "postgresql://db.example/reminder"


def test_a_grade_override_replaces_cadence_and_channels_only_for_that_grade() -> None:
    config = load_config(REPO / "config.toml")
    early = config.stage("early")
    assert early is not None
    assert early.for_grade("E") == (1, ("sms", "email", "voice"))
    assert early.for_grade("A") == (3, ("sms", "email"))
    assert early.for_grade(None) == (3, ("sms", "email"))
