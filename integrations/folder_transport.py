"""The folder transport: an agency file dropped into a local or mounted directory.

The file is written under a hidden temporary name of its own in the same folder (two
writers of one file never share it), flushed to disk (fsync), then renamed: a rename
inside one file system is atomic, so an agency's loader watching the folder sees either
the whole file or nothing under the final name.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path

from reminder.config import AgencyConfig, Config
from reminder.errors import ConfigError, TransportError
from reminder.ports import TransportResult


class FolderTransport:
    """Implements AgencyTransport by writing into `folder`."""

    name = "folder"

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @classmethod
    def from_config(cls, config: Config, agency: AgencyConfig) -> FolderTransport:
        if not agency.path:
            raise ConfigError(f"agencies.{agency.id}.path", "the folder transport needs a path")
        return cls(config.resolve_path(agency.path))

    def deliver(self, file_name: str, content: bytes) -> TransportResult:
        if "/" in file_name or file_name.startswith("."):
            raise TransportError(f"refusing file name {file_name!r}")
        final = self.folder / file_name
        temporary = self.folder / f".{file_name}.{uuid.uuid4().hex[:12]}.part"  # one per writer
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with temporary.open("wb") as handle:
                handle.write(content)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, final)
            _fsync_dir(self.folder)
        except OSError as exc:
            with contextlib.suppress(OSError):
                temporary.unlink(missing_ok=True)
            raise TransportError(f"folder {self.folder}: {exc.strerror or exc}") from exc
        return TransportResult(location=str(final))


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(descriptor)
    finally:
        os.close(descriptor)
