"""`POST /agencies/{id}/outcomes` under uvicorn on loopback, over SQLite and PostgreSQL."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy import Engine, select

from reminder.bootstrap import bootstrap
from reminder.clock import FixedClock
from reminder.config import Config
from reminder.db.tables import cases, payments
from reminder.services.daily_run import RunOptions, run_day
from reminder.web import agencies
from tests.portfolio import Portfolio

PLACED = date(2026, 9, 1)


@pytest.fixture
def server(
    engine: Engine, config: Config, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, list[str]]]:
    monkeypatch.setenv("ACME_OUTCOME_TOKEN", "acme-token")
    monkeypatch.delenv("BEACON_OUTCOME_TOKEN", raising=False)
    p = Portfolio()
    for i in range(6):
        p.loan(f"L{i}", p.borrower(f"B{i}"), first_due=PLACED - timedelta(days=95))
    p.save(engine)
    app = bootstrap(config, engine=engine, clock=FixedClock(datetime(2026, 10, 5, tzinfo=UTC)))
    run_day(app, RunOptions(PLACED, dispatch=False))
    with engine.connect() as conn:
        acme = list(conn.execute(select(cases.c.case_id).where(cases.c.agency_id == "acme")
                                 .order_by(cases.c.case_id)).scalars())  # fmt: skip
    web = FastAPI()
    web.include_router(agencies.router)
    web.state.reminder = app
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    uv = uvicorn.Server(uvicorn.Config(web, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not uv.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}", acme
    uv.should_exit = True
    thread.join(5)


def _post(base: str, agency: str, body: object, token: str | None = "acme-token") -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if isinstance(body, bytes | str):
        return httpx.post(f"{base}/agencies/{agency}/outcomes", content=body, headers=headers)
    return httpx.post(f"{base}/agencies/{agency}/outcomes", json=body, headers=headers)


def test_outcomes_are_applied_and_rejected_per_row(
    server: tuple[str, list[str]], engine: Engine
) -> None:
    base, acme = server
    body = [
        {"case_id": acme[0], "outcome": "payment", "amount": "50.00", "date": "2026-10-01",
         "agency_ref": "W1"},
        {"case_id": acme[0], "outcome": "payment", "amount": -1, "date": "2026-10-01",
         "agency_ref": "W2"},
        "not an object",
        {"case_id": acme[1], "outcome": "dispute", "date": "2026-10-02", "agency_ref": "W3",
         "note": "says it is not theirs"},
    ]  # fmt: skip
    response = _post(base, "acme", body)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "imported": 2, "unchanged": 0,
        "rejected": [{"line": 2, "column": "amount", "reason": "the amount must not be negative"},
                     {"line": 3, "column": None, "reason": "not a JSON object"}],
    }  # fmt: skip
    again = _post(base, "acme", body).json()
    assert (again["imported"], again["unchanged"]) == (0, 2)
    with engine.connect() as conn:
        sources = conn.execute(select(payments.c.source, payments.c.amount)).all()
    assert [(s, str(a)) for s, a in sources] == [("agency", "50.00")]


@pytest.mark.parametrize(
    ("agency", "token", "body", "status"),
    [
        ("zeta", "acme-token", [], 404),
        ("acme", None, [], 401),
        ("acme", "wrong", [], 403),
        ("acme", "acme-token-longer", [], 403),
        ("beacon", "anything", [], 403),  # no token configured: nobody gets in
        ("acme", "acme-token", b"{not json", 422),
        ("acme", "acme-token", {"case_id": "x"}, 422),
        ("acme", "acme-token", b"[" + b" " * (6 * 1024 * 1024) + b"]", 413),
    ],
)
def test_refusals(
    server: tuple[str, list[str]], agency: str, token: str | None, body: object, status: int
) -> None:
    base, _ = server
    response = _post(base, agency, body, token)
    assert response.status_code == status, response.text
    if status == 401:
        assert response.headers["www-authenticate"] == "Bearer"
