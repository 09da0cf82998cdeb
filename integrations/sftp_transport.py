"""The SFTP transport (paramiko): an agency file uploaded to the agency's server.

Authentication is by key only. The environment variable named by `key_file_env` holds the
private key's path, or the key text itself (for secret stores that inject contents), so
no credential ever sits in config.toml. The server's host key must match an entry of the
`known_hosts` file given in config: an unknown or changed host is refused, never trusted on
first use. The file is uploaded under a hidden temporary name of its own in `remote_dir`,
its size checked, then renamed: the agency never sees a half file under the final name.
"""

from __future__ import annotations

import contextlib
import io
import os
import posixpath
import uuid
from pathlib import Path

import paramiko

from reminder.config import AgencyConfig, Config
from reminder.errors import ConfigError, TransportError
from reminder.ports import TransportResult

_KEY_CLASSES = (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey)


def load_private_key(value: str) -> paramiko.PKey:
    """A private key from its text (PEM/OpenSSH) or from a file path."""
    if "PRIVATE KEY" not in value:
        return paramiko.PKey.from_path(Path(value).expanduser())
    for key_class in _KEY_CLASSES:
        try:
            return key_class.from_private_key(io.StringIO(value))
        except paramiko.SSHException:
            continue
    raise paramiko.SSHException("unsupported private key format")


class SftpTransport:
    """Implements AgencyTransport over SFTP, one connection per file."""

    name = "sftp"

    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        key: paramiko.PKey,
        known_hosts: Path,
        remote_dir: str = ".",
        timeout: float = 30.0,
    ) -> None:
        self.host = host
        self.port = port
        self.username = username
        self._key = key
        self.known_hosts = known_hosts
        self.remote_dir = remote_dir
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"SftpTransport({self.username}@{self.host}:{self.port}, key='***')"

    @classmethod
    def from_config(cls, config: Config, agency: AgencyConfig) -> SftpTransport:
        extra = agency.model_extra or {}
        field = f"agencies.{agency.id}"
        for name in ("host", "username", "key_file_env", "known_hosts"):
            if not extra.get(name):
                raise ConfigError(f"{field}.{name}", "required by the sftp transport")
        env = str(extra["key_file_env"])
        secret = os.environ.get(env)
        if not secret:
            raise ConfigError(f"{field}.key_file_env", f"environment variable {env} is not set")
        known_hosts = config.resolve_path(str(extra["known_hosts"]))
        if not known_hosts.is_file():
            raise ConfigError(f"{field}.known_hosts", f"no such file: {known_hosts}")
        try:
            key = load_private_key(secret)
        except (OSError, paramiko.SSHException) as exc:
            raise ConfigError(f"{field}.key_file_env", f"{env}: unusable key ({exc})") from exc
        return cls(
            host=str(extra["host"]),
            port=int(extra.get("port", 22)),
            username=str(extra["username"]),
            key=key,
            known_hosts=known_hosts,
            remote_dir=str(extra.get("remote_dir", ".")),
            timeout=float(extra.get("timeout", 30.0)),
        )

    def _connect(self) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        client.load_host_keys(str(self.known_hosts))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect(
            self.host,
            port=self.port,
            username=self.username,
            pkey=self._key,
            timeout=self.timeout,
            banner_timeout=self.timeout,
            auth_timeout=self.timeout,
            allow_agent=False,
            look_for_keys=False,
        )
        return client

    def deliver(self, file_name: str, content: bytes) -> TransportResult:
        final = posixpath.join(self.remote_dir, file_name)
        temporary = posixpath.join(self.remote_dir, f".{file_name}.{uuid.uuid4().hex[:12]}.part")
        where = f"sftp://{self.host}:{self.port}"
        try:
            client = self._connect()
        except paramiko.BadHostKeyException as exc:
            raise TransportError(f"{where}: host key does not match known_hosts") from exc
        except paramiko.SSHException as exc:
            raise TransportError(f"{where}: {exc}") from exc
        except OSError as exc:
            raise TransportError(f"{where}: cannot connect ({exc})") from exc
        try:
            sftp = client.open_sftp()
            sftp.putfo(io.BytesIO(content), temporary, file_size=len(content), confirm=True)
            _rename_over(sftp, temporary, final)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            _remove_quietly(client, temporary)
            raise TransportError(f"{where}: upload of {file_name} failed ({exc})") from exc
        finally:
            client.close()
        return TransportResult(location=f"{where}{final}")


def _rename_over(sftp: paramiko.SFTPClient, source: str, target: str) -> None:
    """Atomic replace where the server offers posix-rename (OpenSSH does); else plain
    rename, removing a previous delivery of the same batch first (names are per batch)."""
    try:
        sftp.posix_rename(source, target)
        return
    except OSError as exc:
        if "unsupported" not in str(exc).lower() and "not supported" not in str(exc).lower():
            raise
    with contextlib.suppress(FileNotFoundError):
        sftp.remove(target)
    sftp.rename(source, target)


def _remove_quietly(client: paramiko.SSHClient, path: str) -> None:
    """Best effort: after a dropped connection a hidden `.part` file may stay behind."""
    with contextlib.suppress(Exception):  # the upload error is the one worth reporting
        client.open_sftp().remove(path)
