"""Agency transports against real servers on loopback.

SFTP: asyncssh's SFTP server (with its own host key, key auth, a chroot folder), driven by
our paramiko client. HTTPS: a plain-HTTP server on 127.0.0.1 stands for the agency
(TLS is httpx's business; what is ours is the request, the retries and the 4xx rule).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from integrations.folder_transport import FolderTransport
from integrations.https_transport import HttpsTransport
from integrations.sftp_transport import SftpTransport
from reminder.config import AgencyConfig, Config
from reminder.errors import ConfigError, TransportError


@dataclass
class SftpServer:
    root: Path
    port: int
    host_key: asyncssh.SSHKey
    client_key_path: Path
    drop_after: list[int] = field(default_factory=lambda: [0])  # bytes; 0 = never

    def known_hosts(self, path: Path, key: asyncssh.SSHKey | None = None) -> Path:
        public = (key or self.host_key).export_public_key().decode().strip()
        path.write_text(f"[127.0.0.1]:{self.port} {public}\n")
        return path

    def transport(self, known_hosts: Path, key_source: str | None = None) -> SftpTransport:
        from integrations.sftp_transport import load_private_key

        key = load_private_key(key_source or str(self.client_key_path))
        return SftpTransport("127.0.0.1", self.port, "agency", key, known_hosts, ".", timeout=5)


def _sftp_factory(root: Path, drop_after: list[int]) -> type[asyncssh.SFTPServer]:
    class DroppingSFTPServer(asyncssh.SFTPServer):
        received = 0

        def __init__(self, chan: Any) -> None:
            super().__init__(chan, chroot=str(root).encode())

        def write(self, file_obj: object, offset: int, data: bytes) -> int:
            type(self).received += len(data)
            if drop_after[0] and type(self).received > drop_after[0]:
                self.channel.get_connection().abort()
                raise asyncssh.SFTPConnectionLost("dropped by the test server")
            return super().write(file_obj, offset, data)  # type: ignore[return-value]

    return DroppingSFTPServer


@pytest.fixture
def sftp_server(tmp_path: Path) -> Iterator[SftpServer]:
    root = tmp_path / "agency_home"
    root.mkdir()
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key_path = tmp_path / "id_agency"
    client_key_path.write_bytes(client_key.export_private_key())
    authorized = asyncssh.import_authorized_keys(client_key.export_public_key().decode())
    drop_after = [0]
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, Any] = {}

    async def start() -> None:
        holder["server"] = await asyncssh.listen(
            "127.0.0.1", 0, server_host_keys=[host_key], authorized_client_keys=authorized,
            sftp_factory=_sftp_factory(root, drop_after), allow_scp=False,
        )  # fmt: skip
        holder["port"] = holder["server"].sockets[0].getsockname()[1]
        ready.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(start()),
                                              loop.run_forever()), daemon=True)  # fmt: skip
    thread.start()
    assert ready.wait(10)
    yield SftpServer(root, holder["port"], host_key, client_key_path, drop_after)
    loop.call_soon_threadsafe(holder["server"].close)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def test_sftp_uploads_under_the_final_name_only_when_whole(
    sftp_server: SftpServer, tmp_path: Path
) -> None:
    transport = sftp_server.transport(sftp_server.known_hosts(tmp_path / "known_hosts"))
    content = b"case_id,balance\n" + b"C1,10.00\n" * 50_000
    result = transport.deliver("acme_placements_x.csv", content)
    assert (sftp_server.root / "acme_placements_x.csv").read_bytes() == content
    assert result.location.endswith("acme_placements_x.csv")
    assert [p.name for p in sftp_server.root.iterdir()] == ["acme_placements_x.csv"]
    transport.deliver("acme_placements_x.csv", b"again\n")  # the same batch: same name
    assert (sftp_server.root / "acme_placements_x.csv").read_bytes() == b"again\n"


def test_sftp_accepts_the_key_text_itself(sftp_server: SftpServer, tmp_path: Path) -> None:
    text = sftp_server.client_key_path.read_text()
    transport = sftp_server.transport(sftp_server.known_hosts(tmp_path / "kh"), key_source=text)
    transport.deliver("f.csv", b"x\n")
    assert (sftp_server.root / "f.csv").read_bytes() == b"x\n"


def test_sftp_refuses_a_host_whose_key_is_not_in_known_hosts(
    sftp_server: SftpServer, tmp_path: Path
) -> None:
    impostor = asyncssh.generate_private_key("ssh-ed25519")
    for known_hosts in (sftp_server.known_hosts(tmp_path / "kh1", impostor),
                        tmp_path / "empty"):  # fmt: skip
        known_hosts.touch()
        with pytest.raises(TransportError, match="host key|not found in known_hosts"):
            sftp_server.transport(known_hosts).deliver("f.csv", b"x\n")
    assert list(sftp_server.root.iterdir()) == []


def test_sftp_connection_dropped_mid_upload_leaves_no_file_under_the_final_name(
    sftp_server: SftpServer, tmp_path: Path
) -> None:
    sftp_server.drop_after[0] = 100_000
    transport = sftp_server.transport(sftp_server.known_hosts(tmp_path / "known_hosts"))
    with pytest.raises(TransportError, match="upload of big.csv failed"):
        transport.deliver("big.csv", b"0123456789" * 100_000)
    assert not (sftp_server.root / "big.csv").exists()


def _agency(**extra: Any) -> AgencyConfig:
    return AgencyConfig.model_validate({"id": "acme", "name": "Acme", **extra})


def test_sftp_config_names_the_missing_variable(
    config: Config, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("ACME_SFTP_KEY", raising=False)
    agency = _agency(transport="sftp", host="h", username="u", key_file_env="ACME_SFTP_KEY",
                     known_hosts=str(tmp_path))  # fmt: skip
    with pytest.raises(ConfigError, match="ACME_SFTP_KEY") as info:
        SftpTransport.from_config(config, agency)
    assert info.value.field == "agencies.acme.key_file_env"


class Agency(BaseHTTPRequestHandler):
    script: list[int] = []
    seen: list[dict[str, str]] = []
    slow_first = False

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).seen.append({"auth": self.headers.get("Authorization", ""),
                                "name": self.headers.get("X-File-Name", ""),
                                "body": body.decode()})  # fmt: skip
        if type(self).slow_first and len(type(self).seen) == 1:
            time.sleep(1.0)
        status = type(self).script.pop(0) if type(self).script else 201
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def agency_url() -> Iterator[str]:
    Agency.script, Agency.seen, Agency.slow_first = [], [], False
    server = ThreadingHTTPServer(("127.0.0.1", 0), Agency)
    server.daemon_threads = False  # server_close() waits for a slow handler to finish
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/placements"
    server.shutdown()
    server.server_close()


def test_https_posts_with_the_bearer_token_and_retries_5xx(agency_url: str) -> None:
    Agency.script = [503, 502]
    transport = HttpsTransport(agency_url, "s3cret", backoff=0.01)
    transport.deliver("acme_placements_1.csv", b"case_id\nC1\n")
    assert [s["auth"] for s in Agency.seen] == ["Bearer s3cret"] * 3
    assert Agency.seen[-1]["name"] == "acme_placements_1.csv"
    assert "s3cret" not in repr(transport)


def test_https_retries_a_timeout(agency_url: str) -> None:
    Agency.slow_first = True
    HttpsTransport(agency_url, "t", timeout=0.3, backoff=0.01).deliver("f.csv", b"x")
    assert len(Agency.seen) == 2


def test_https_does_not_retry_a_4xx(agency_url: str) -> None:
    Agency.script = [422]
    with pytest.raises(TransportError, match="refused f.csv .HTTP 422"):
        HttpsTransport(agency_url, "t", backoff=0.01).deliver("f.csv", b"x")
    assert len(Agency.seen) == 1


def test_https_gives_up_after_the_last_attempt(agency_url: str) -> None:
    Agency.script = [500] * 10
    with pytest.raises(TransportError, match="HTTP 500"):
        HttpsTransport(agency_url, "t", attempts=3, backoff=0.01).deliver("f.csv", b"x")
    assert len(Agency.seen) == 3


def test_https_token_comes_from_the_named_variable_only(
    config: Config, monkeypatch: pytest.MonkeyPatch, agency_url: str
) -> None:
    agency = _agency(transport="https", url=agency_url, token_env="ACME_PLACEMENT_TOKEN")
    monkeypatch.delenv("ACME_PLACEMENT_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="ACME_PLACEMENT_TOKEN is not set"):
        HttpsTransport.from_config(config, agency)
    monkeypatch.setenv("ACME_PLACEMENT_TOKEN", "from-env")
    HttpsTransport.from_config(config, agency).deliver("f.csv", b"x")
    assert Agency.seen[0]["auth"] == "Bearer from-env"


def test_folder_transport_failure_is_a_transport_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    with pytest.raises(TransportError):
        FolderTransport(blocker / "sub").deliver("f.csv", b"x")


def test_export_over_sftp_marks_cases_exported_only_after_a_whole_upload(
    sftp_server: SftpServer, tmp_path: Path, engine: Any, config: Config
) -> None:
    from datetime import UTC, date, datetime

    from sqlalchemy import select

    from reminder.bootstrap import bootstrap
    from reminder.clock import FixedClock
    from reminder.db.tables import cases
    from reminder.services.daily_run import RunOptions, run_day
    from reminder.services.handoff_export import export
    from tests.portfolio import Portfolio

    config = config.model_copy(update={"agencies": config.agencies[:1]})
    p = Portfolio()
    for i in range(400):
        p.loan(f"L{i:03}", p.borrower(f"B{i:03}"), first_due=date(2026, 6, 1))
    p.save(engine)
    clock = FixedClock(datetime(2026, 9, 10, 15, tzinfo=UTC))
    app = bootstrap(config, engine=engine, clock=clock)
    run_day(app, RunOptions(date(2026, 9, 10), dispatch=False))
    transport = sftp_server.transport(sftp_server.known_hosts(tmp_path / "known_hosts"))
    sftp_server.drop_after[0] = 40_000  # the placement file is about 100 kB
    report = export(app, {"acme": transport})
    assert len(report.failed) == 1 and not report.files
    failed_name = report.failed[0]["file"]
    assert [p.name for p in sftp_server.root.glob("*.csv")] == []
    with engine.connect() as conn:
        assert set(conn.execute(select(cases.c.exported_at)).scalars()) == {None}
    sftp_server.drop_after[0] = 0
    report = export(app, {"acme": transport})
    assert [(f.file_name, f.row_count) for f in report.files] == [(failed_name, 400)]
    names = sorted(p.name for p in sftp_server.root.iterdir() if not p.name.startswith("."))
    assert names == [report.files[0].file_name,
                     report.files[0].file_name.replace(".csv", ".manifest.json")]
    with engine.connect() as conn:
        assert None not in set(conn.execute(select(cases.c.exported_at)).scalars())


def test_sftp_from_config_reads_the_key_from_the_named_variable(
    sftp_server: SftpServer, config: Config, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    sftp_server.known_hosts(tmp_path / "agency_known_hosts")  # config.base_dir is tmp_path
    (sftp_server.root / "inbox").mkdir()
    monkeypatch.setenv("ACME_SFTP_KEY", str(sftp_server.client_key_path))
    agency = _agency(transport="sftp", host="127.0.0.1", port=sftp_server.port,
                     username="acme", key_file_env="ACME_SFTP_KEY",
                     known_hosts="agency_known_hosts", remote_dir="inbox")  # fmt: skip
    transport = SftpTransport.from_config(config, agency)
    assert "ACME" not in repr(transport) and "***" in repr(transport)
    transport.deliver("f.csv", b"x\n")
    assert (sftp_server.root / "inbox" / "f.csv").read_bytes() == b"x\n"
