"""`import_file` against SQLite and PostgreSQL: upserts, rejections with lines, exact money."""

from __future__ import annotations

import dataclasses
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, Table, func, select

from reminder.db.tables import borrowers, installments, payments
from reminder.errors import InputError
from reminder.services.import_rows import kinds, parse_column
from reminder.services.importer import ImportReport, import_file

BORROWERS = "borrower_id,name,phone,email,timezone,locale,risk_grade,consent_sms\n"
LOANS = "loan_id,borrower_id,currency,principal,opened_on,status\n"
INSTALLMENTS = "loan_id,seq,due_date,amount_due\n"
PAYMENTS = "payment_id,loan_id,paid_on,amount,source\n"


def write(tmp_path: Path, name: str, text: str, encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding=encoding, newline="")
    return path


def load(engine: Engine, tmp_path: Path, kind: str, text: str, **options: Any) -> ImportReport:
    name = options.pop("name", f"{kind}.csv")
    encoding = options.pop("encoding", "utf-8")
    return import_file(engine, kind, write(tmp_path, name, text, encoding), **options)


def rows(engine: Engine, table: Table) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        found = conn.execute(select(table).order_by(*table.primary_key.columns)).mappings()
        return [dict(row) for row in found]


@pytest.fixture
def portfolio(engine: Engine, tmp_path: Path) -> Engine:
    """Borrower B1 with loans L1 and L2."""
    load(engine, tmp_path, "borrowers", BORROWERS + "B1,Ann Lee,+12125550100,,,,,\n")
    load(engine, tmp_path, "loans", LOANS + "L1,B1,USD,1000.00,,\nL2,B1,USD,500,,\n")
    return engine


def test_imports_borrowers_with_phones_in_e164_and_locales_normalised(
    engine: Engine, tmp_path: Path
) -> None:
    report = load(
        engine,
        tmp_path,
        "borrowers",
        BORROWERS
        + "B1,Ann Lee,(212) 555-0100,ann@example.com,America/New_York,en,a,no\n"
        + "B2,Wei Zhang,+86 10 6552 9988,,Asia/Shanghai,zh_cn,C,\n"
        + "B3,Ana Ruiz,+44 20 7946 0958,,Europe/London,ES,,YES\n",
    )
    assert (report.imported, report.unchanged, report.rejected) == (3, 0, [])
    stored = {row["borrower_id"]: row for row in rows(engine, borrowers)}
    assert stored["B1"]["phone"] == "+12125550100"
    assert stored["B2"]["phone"] == "+861065529988"
    assert [stored[b]["locale"] for b in ("B1", "B2", "B3")] == ["en", "zh-CN", "es"]
    assert stored["B1"]["risk_grade"] == "A" and stored["B3"]["risk_grade"] is None
    assert [stored[b]["consent_sms"] for b in ("B1", "B2", "B3")] == [False, True, True]
    assert stored["B1"]["consent_email"] is True  # absent column: the default
    assert stored["B1"]["updated_at"] is not None


GOOD = {
    "borrowers": BORROWERS + "B9,Bo Good,+12125550199,bo@example.com,UTC,en,B,true\n",
    "loans": LOANS + "L9,B1,USD,10.00,2025-01-01,active\n",
    "installments": INSTALLMENTS + "L1,1,2025-02-01,10.00\n",
    "payments": PAYMENTS + "P9,L1,2025-02-01,10.00,ledger\n",
}

REJECTIONS = [
    ("borrowers", "B2,,+12125550101,,,,,", "name", "missing required field"),
    ("borrowers", "B2,Bob,555,,,,,", "phone", "'555' is not a valid phone number"),
    ("borrowers", "B2,Bob,call me,,,,,", "phone", "is not a phone number"),
    ("borrowers", "B2,Bob,,bob@example,,,,", "email", "not an email address"),
    ("borrowers", "B2,Bob,,,Mars/Olympus,,,", "timezone", "unknown IANA timezone"),
    ("borrowers", "B2,Bob,,,,xx-QQ,,", "locale", "unknown locale 'xx-QQ'"),
    ("borrowers", "B2,Bob,,,,,F,", "risk_grade", "'F' is not one of A, B, C, D, E"),
    ("borrowers", "B2,Bob,,,,,,maybe", "consent_sms", "not true/false, 1/0 or yes/no"),
    ("loans", "L3,B1,XYZ,10.00,,", "currency", "unknown ISO 4217 currency 'XYZ'"),
    ("loans", "L3,B1,USD,10.005,,", "principal", "more than 2 decimal places"),
    ("loans", "L3,B1,USD,-10.00,,", "principal", "is negative"),
    ("loans", "L3,B1,USD,1e3,,", "principal", "not a decimal amount"),
    ("loans", "L3,B1,USD,10.00,2025-02-30,", "opened_on", "not a real date"),
    ("loans", "L3,B1,USD,10.00,01/02/2025,", "opened_on", "not a date YYYY-MM-DD"),
    ("loans", "L3,B1,USD,10.00,,paused", "status", "not one of active, closed, written_off"),
    ("loans", "L3,B404,USD,10.00,,", "borrower_id", "unknown borrower_id 'B404'"),
    ("installments", "L1,x,2025-03-01,10.00", "seq", "not a whole number"),
    ("installments", "L1,2,20250301,10.00", "due_date", "not a date YYYY-MM-DD"),
    ("installments", "L1,2,2025-03-01,", "amount_due", "missing required field"),
    ("installments", "L404,2,2025-03-01,10.00", "loan_id", "unknown loan_id 'L404'"),
    ("payments", "P2,L1,2025-03-01,0.00,ledger", "amount", "must be greater than zero"),
    ("payments", "P2,L1,2025-03-01,-5,ledger", "amount", "is negative"),
    ("payments", "P2,L1,2025-03-01,5.00,bank", "source", "not one of ledger, agency, borrower"),
    ("payments", "P2,L404,2025-03-01,5.00,", "loan_id", "unknown loan_id 'L404'"),
]


@pytest.mark.parametrize(("kind", "bad", "column", "reason"), REJECTIONS)
def test_every_rejection_names_the_line_column_and_reason_and_the_good_rows_land(
    portfolio: Engine, tmp_path: Path, kind: str, bad: str, column: str, reason: str
) -> None:
    good = GOOD[kind]
    report = load(portfolio, tmp_path, kind, good + bad + "\n" + good.split("\n", 1)[1])
    assert report.imported == 1 and report.unchanged == 1  # the good row, then again
    assert [(r.line, r.column) for r in report.rejected] == [(3, column)]
    assert reason in report.rejected[0].reason
    assert report.as_json()["rejected"] == [
        {"line": 3, "column": column, "reason": report.rejected[0].reason}
    ]


def test_good_rows_around_bad_rows_land_across_chunks(portfolio: Engine, tmp_path: Path) -> None:
    lines = [f"L1,{seq},2025-{seq:02d}-01,{seq}.00" for seq in range(1, 13)]
    lines[4] = "L1,5,2025-05-01,5.001"
    lines[9] = "L404,10,2025-10-01,10.00"
    report = load(
        portfolio, tmp_path, "installments", INSTALLMENTS + "\n".join(lines), chunk_rows=3
    )
    assert (report.imported, report.unchanged, report.rejected_rows) == (10, 0, 2)
    assert [(r.line, r.column) for r in report.rejected] == [(6, "amount_due"), (11, "loan_id")]
    assert [row["seq"] for row in rows(portfolio, installments)] == [1, 2, 3, 4, 6, 7, 8, 9, 11, 12]


def test_a_reimport_reports_every_row_unchanged_and_changes_nothing(
    portfolio: Engine, tmp_path: Path
) -> None:
    text = BORROWERS + "B2,Bob,+1 212 555 0101,bob@example.com,UTC,en,B,false\n"
    load(portfolio, tmp_path, "borrowers", text)
    before = rows(portfolio, borrowers)
    again = load(portfolio, tmp_path, "borrowers", text)
    assert (again.imported, again.unchanged, again.rejected) == (0, 1, [])
    assert rows(portfolio, borrowers) == before  # updated_at included


def test_a_changed_phone_counts_as_imported(portfolio: Engine, tmp_path: Path) -> None:
    report = load(portfolio, tmp_path, "borrowers", BORROWERS + "B1,Ann Lee,+12125550111,,,,,\n")
    assert (report.imported, report.unchanged) == (1, 0)
    assert rows(portfolio, borrowers)[0]["phone"] == "+12125550111"


def test_a_column_absent_from_the_file_keeps_its_stored_value(
    portfolio: Engine, tmp_path: Path
) -> None:
    load(portfolio, tmp_path, "borrowers", BORROWERS + "B1,Ann Lee,,ann@example.com,UTC,en,B,no\n")
    report = load(portfolio, tmp_path, "borrowers", "borrower_id,name\nB1,Ann Lee-Smith\n")
    assert report.imported == 1
    (row,) = rows(portfolio, borrowers)
    assert (row["name"], row["email"], row["consent_sms"]) == (
        "Ann Lee-Smith",
        "ann@example.com",
        False,
    )


def test_a_key_repeated_in_the_file_is_applied_in_order_the_later_row_wins(
    portfolio: Engine, tmp_path: Path
) -> None:
    text = INSTALLMENTS + "L1,1,2025-02-01,10.00\nL1,1,2025-02-01,10.00\nL1,1,2025-02-01,12.00\n"
    report = load(portfolio, tmp_path, "installments", text)
    assert (report.imported, report.unchanged) == (2, 1)
    assert [row["amount_due"] for row in rows(portfolio, installments)] == [Decimal("12.00")]


def test_jsonl_and_csv_of_the_same_rows_give_the_same_result(
    portfolio: Engine, tmp_path: Path
) -> None:
    csv_text = PAYMENTS + "P1,L1,2025-02-01,10.10,\nP2,L2,2025-02-03,0.5,borrower\n"
    records = [
        {"payment_id": "P1", "loan_id": "L1", "paid_on": "2025-02-01", "amount": 10.10},
        {
            "payment_id": "P2",
            "loan_id": "L2",
            "paid_on": "2025-02-03",
            "amount": "0.5",
            "source": "borrower",
        },
    ]
    jsonl_text = "".join(json.dumps(record) + "\n" for record in records)
    first = load(portfolio, tmp_path, "payments", csv_text)
    stored = rows(portfolio, payments)
    second = load(portfolio, tmp_path, "payments", jsonl_text, name="payments.jsonl")
    assert (first.imported, second.imported, second.unchanged, second.format) == (2, 0, 2, "jsonl")
    assert rows(portfolio, payments) == stored
    assert [row["amount"] for row in stored] == [Decimal("10.10"), Decimal("0.50")]


def test_jsonl_lines_are_counted_from_one_and_bad_json_is_a_row_rejection(
    portfolio: Engine, tmp_path: Path
) -> None:
    text = '{"loan_id": "L1", "seq": 1, "due_date": "2025-02-01", "amount_due": "1.00"}\n\n'
    text += "{not json\n[1, 2]\n"
    text += '{"loan_id": "L1", "seq": 2, "due_date": "2025-03-01"}\n'
    report = load(portfolio, tmp_path, "installments", text, name="i.ndjson")
    assert report.imported == 1
    assert [(r.line, r.column) for r in report.rejected] == [
        (3, None),
        (4, None),
        (5, "amount_due"),
    ]


def test_a_utf8_bom_is_tolerated(engine: Engine, tmp_path: Path) -> None:
    report = load(engine, tmp_path, "borrowers", BORROWERS + "B1,Zoë,,,,,,\n", encoding="utf-8-sig")
    assert (report.imported, report.rejected) == (1, [])
    assert rows(engine, borrowers)[0]["name"] == "Zoë"


def test_money_is_stored_exactly(portfolio: Engine, tmp_path: Path) -> None:
    load(
        portfolio,
        tmp_path,
        "installments",
        INSTALLMENTS + "L1,1,2025-02-01,0.10\nL1,2,2025-03-01,0.20\n",
    )
    with portfolio.connect() as conn:
        total = conn.execute(select(func.sum(installments.c.amount_due))).scalar_one()
    assert total == Decimal("0.30") and isinstance(total, Decimal)


def test_payments_for_loans_imported_just_before_land_in_the_same_chunk(
    portfolio: Engine, tmp_path: Path
) -> None:
    load(portfolio, tmp_path, "loans", LOANS + "L7,B1,EUR,70.00,,\nL8,B1,EUR,80.00,,\n")
    report = load(
        portfolio, tmp_path, "payments", PAYMENTS + "P7,L7,2025-02-01,7.00,\nP8,L8,2025-02-01,8,\n"
    )
    assert (report.imported, report.rejected) == (2, [])
    assert [row["source"] for row in rows(portfolio, payments)] == ["ledger", "ledger"]


def test_blank_lines_and_quoted_line_breaks_keep_the_physical_line_numbers(
    engine: Engine, tmp_path: Path
) -> None:
    text = BORROWERS + '\nB1,"Ann\nLee",,,,,,\n,,,,,,,\nB2,Bob,,,,,Z,\n'
    report = load(engine, tmp_path, "borrowers", text)
    assert report.imported == 1
    assert [(r.line, r.column) for r in report.rejected] == [(6, "risk_grade")]


def test_quoted_line_breaks_alone_keep_the_physical_line_numbers(
    engine: Engine, tmp_path: Path
) -> None:
    text = BORROWERS + 'B1,"Ann\r\nLee",,,,,,\nB2,"Bob\nby",,,,,Z,\nB3,Cy,,,,,Z,\n'
    report = load(engine, tmp_path, "borrowers", text)
    assert [(r.line, r.column) for r in report.rejected] == [(4, "risk_grade"), (6, "risk_grade")]


def test_a_row_with_more_values_than_the_header_is_rejected(engine: Engine, tmp_path: Path) -> None:
    report = load(engine, tmp_path, "borrowers", "borrower_id,name\nB1,Ann,extra\nB2,Bob,\n")
    assert report.imported == 1
    assert [(r.line, r.column, r.reason) for r in report.rejected] == [
        (2, None, "3 fields, the header has 2")
    ]


def test_unknown_columns_are_ignored_with_one_warning(engine: Engine, tmp_path: Path) -> None:
    report = load(
        engine, tmp_path, "borrowers", "borrower_id,name,shoe_size\nB1,Ann,38\nB2,Bo,44\n"
    )
    assert report.imported == 2
    assert len(report.warnings) == 1 and "shoe_size" in report.warnings[0]


def test_a_missing_required_header_is_an_input_error_naming_the_file_and_column(
    engine: Engine, tmp_path: Path
) -> None:
    with pytest.raises(InputError, match=r"loans\.csv.*principal"):
        load(engine, tmp_path, "loans", "loan_id,borrower_id,currency\nL1,B1,USD\n")


def test_an_unreadable_file_or_unknown_kind_is_an_input_error(
    engine: Engine, tmp_path: Path
) -> None:
    with pytest.raises(InputError, match="missing.csv"):
        import_file(engine, "borrowers", tmp_path / "missing.csv")
    with pytest.raises(InputError, match="people"):
        load(engine, tmp_path, "people", BORROWERS)
    with pytest.raises(InputError, match="not UTF-8"):
        load(engine, tmp_path, "borrowers", BORROWERS + "B1,Zoë,,,,,,\n", encoding="latin-1")


def test_progress_reports_bytes_up_to_the_file_size(portfolio: Engine, tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    text = INSTALLMENTS + "".join(f"L1,{seq},2025-02-01,1.00\n" for seq in range(1, 50))
    load(
        portfolio,
        tmp_path,
        "installments",
        text,
        chunk_rows=10,
        on_progress=lambda *a: seen.append(a),
    )
    size = len(text.encode())
    assert seen[-1] == (size, size) and len(seen) >= 5
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)


def test_a_crash_loses_at_most_the_chunk_in_flight_and_a_rerun_completes_the_import(
    portfolio: Engine, tmp_path: Path
) -> None:
    class Crash(Exception):
        pass

    def crash_after_the_first_chunk(done: int, total: int) -> None:
        raise Crash

    text = INSTALLMENTS + "".join(f"L1,{seq},2025-02-01,1.00\n" for seq in range(1, 11))
    with pytest.raises(Crash):
        load(
            portfolio,
            tmp_path,
            "installments",
            text,
            chunk_rows=4,
            on_progress=crash_after_the_first_chunk,
        )
    assert len(rows(portfolio, installments)) == 4  # the first chunk was committed
    rerun = load(portfolio, tmp_path, "installments", text, chunk_rows=4)
    assert (rerun.imported, rerun.unchanged) == (6, 4)
    assert len(rows(portfolio, installments)) == 10


TRICKY = [
    *("L1", " L1", "L1 ", "", "a" * 64, "a" * 65, "a\x00b", "a\tb", "Ann Lee", "\xa0x", "x\u3000"),
    *("1", "01", "0", "999999999", "1000000000", "+1", "-1", " 1", "\u0661", "1_0", "1.0"),
    *("2025-01-01", "2024-02-29", "2025-02-30", " 2025-01-01", "2025-1-01", "20250101"),
    *("1.00", "0.00", "1.5", "1.005", "-1.00", "-0.00", "01.00", "\u0661.00", "1.00 ", "1e3"),
    *("999999999999999.99", "9999999999999999.99", "true", "TRUE", "yes", "No", "maybe"),
    *("USD", "usd", "XYZ", "UTC", "Europe/Paris", "europe/paris", "en", "zh_cn", "zh-CN"),
    *("A", "a", "F", "active", "Closed", "ledger", "bank", None),
]


@given(column=st.lists(st.sampled_from(TRICKY), min_size=1, max_size=6))
@settings(max_examples=300, deadline=None)
def test_the_column_fast_paths_agree_with_the_per_value_parsers(column: list[str | None]) -> None:
    for kind in kinds().values():
        for field in kind.fields:
            if field.fast is None:
                continue
            fast, fast_errors = parse_column(field, column)
            slow, slow_errors = parse_column(dataclasses.replace(field, fast=None), column)
            assert (list(fast), fast_errors) == (list(slow), slow_errors), field.name


def test_json_records_carrying_different_fields_merge_in_file_order(
    portfolio: Engine, tmp_path: Path
) -> None:
    records = [
        {"borrower_id": "B1", "name": "Ann Lee", "email": "ann@example.com", "consent_sms": 0},
        {"borrower_id": "B1", "name": "Ann Lee-Smith"},
        {"borrower_id": "B2", "name": "Bob", "consent_voice": False},
        {"borrower_id": "B2", "name": "Bob", "email": None},
    ]
    text = "".join(json.dumps(record) + "\n" for record in records)
    report = load(portfolio, tmp_path, "borrowers", text, name="b.jsonl")
    assert (report.imported, report.unchanged) == (3, 1)
    ann, bob = rows(portfolio, borrowers)
    assert (ann["name"], ann["email"], ann["consent_sms"]) == (
        "Ann Lee-Smith",
        "ann@example.com",
        False,
    )
    assert (ann["phone"], bob["consent_voice"], bob["consent_sms"]) == ("+12125550100", False, True)


def test_rejections_beyond_the_cap_are_counted_not_kept(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("reminder.services.importer.MAX_REJECTIONS", 2)
    report = load(engine, tmp_path, "borrowers", "borrower_id,name\n" + "B1,\n" * 5)
    document = report.as_json()
    assert len(document["rejected"]) == 2 and document["rejected_total"] == 5
    assert report.rejected_rows == 5
