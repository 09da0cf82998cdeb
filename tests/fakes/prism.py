"""Stoplight Prism mocks of the providers' own OpenAPI specs, for tests on loopback.

Prism validates every request against the spec and answers with the spec's examples, so it
proves the official clients send what the provider accepts; it cannot produce provider error
codes, 429s, timeouts or callbacks (``tests.fakes.fake_twilio`` does those).

What Prism 5.14 does, observed with the specs in ``shared/provider-specs``:

- Start-up: about 1.5-2.5 s until it answers (the Twilio spec is 1.9 MB); it logs every
  route and request, so its output goes to a file, never to an unread pipe.
- Auth is checked for presence and form only. Twilio (``http basic``): any ``user:password``
  passes; no header, ``Basic <not base64 user:pass>`` or a Bearer token gets 401
  ``application/problem+json`` with ``WWW-Authenticate: Basic realm="*"`` (the spec has no
  401, Prism makes one up). SendGrid (``http bearer``): no header gets the spec's own 401
  example; any ``Bearer`` value, even an empty key, passes.
- Twilio create message: 201 with the spec's example (always sid ``SMaaaa…``, to
  ``+14155552345`` whatever was sent). No ``To``, or an AccountSid not matching
  ``^AC[0-9a-fA-F]{32}$``: 422 ``application/problem+json`` listing the violations (the spec
  has no 4xx, Prism makes one up); the twilio client raises ``TwilioRestException`` with
  ``status == code == 422``. Phone-number format is not checked (``format: phone-number``
  is unknown to Prism). ``Prefer: code=400`` gives 404: the spec has no 400 to pick.
- SendGrid mail send: 202 with an empty body. An invalid body (1,001 personalizations, 11
  categories, ``custom_args`` as an object in the unpatched spec) gets 400 with the spec's
  example body ``{"errors":[{"field":"field_name","message":"error message"}]}``, not the
  real violation; python-http-client raises ``BadRequestsError``.
- Unknown path: 404 ``NO_PATH_MATCHED_ERROR``.

The npm package is installed once into ``$REMINDER_PRISM_DIR`` (default
``~/.cache/reminder-tests/prism``); tests skip when npm is missing or the install fails, and
when ``../shared/provider-specs`` (beside the repository) is absent.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

PRISM_PACKAGE = "@stoplight/prism-cli@5.14.2"
PROVIDER_SPECS = Path(__file__).resolve().parents[2].parent / "shared" / "provider-specs"
TWILIO_SPEC = "twilio_api_v2010.json"
SENDGRID_SPEC = "tsg_mail_v3.patched-custom_args.json"


def spec_path(name: str) -> Path:
    """Return a provider spec's path, or skip the test when the specs folder is absent."""
    if not PROVIDER_SPECS.is_dir():
        pytest.skip("../shared/provider-specs not present")
    path = PROVIDER_SPECS / name
    if not path.is_file():
        pytest.skip(f"../shared/provider-specs/{name} not present")
    return path


def prism_dir() -> Path:
    """Where the npm package is (to be) installed."""
    default = Path.home() / ".cache" / "reminder-tests" / "prism"
    return Path(os.environ.get("REMINDER_PRISM_DIR") or default)


def prism_executable() -> Path:
    """Install Prism if needed (once, under a file lock) and return its executable.

    Skips the calling test when npm is missing or the install fails.
    """
    prefix = prism_dir()
    executable = prefix / "node_modules" / ".bin" / "prism"
    if executable.exists():
        return executable
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm not found: cannot install Stoplight Prism")
    prefix.mkdir(parents=True, exist_ok=True)
    with open(prefix / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test process may be installing it
        if not executable.exists():
            command = [npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund",
                       PRISM_PACKAGE]  # fmt: skip
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=600)
            except (OSError, subprocess.TimeoutExpired) as exc:
                pytest.skip(f"npm install {PRISM_PACKAGE} failed: {exc}")
            if done.returncode != 0 or not executable.exists():
                tail = (done.stderr or done.stdout).strip()[-500:]
                pytest.skip(f"npm install {PRISM_PACKAGE} failed ({done.returncode}): {tail}")
    return executable


def free_port() -> int:
    """Ask the kernel for a free port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=1).close()
    except urllib.error.HTTPError:
        return True  # Prism answers 404 for "/": it is up
    except OSError:
        return False
    return True


@contextlib.contextmanager
def prism_mock(spec: str | Path, start_timeout: float = 60.0) -> Iterator[str]:
    """Serve ``spec`` with ``prism mock`` on 127.0.0.1 and yield its base URL.

    Args:
        spec: A file name in ``../shared/provider-specs`` or a path.
        start_timeout: Seconds to wait for Prism to answer before failing.

    Yields:
        ``http://127.0.0.1:PORT``. The process is terminated on exit.
    """
    spec_file = spec if isinstance(spec, Path) else spec_path(spec)
    executable = prism_executable()
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    command = [str(executable), "mock", "-h", "127.0.0.1", "-p", str(port), str(spec_file)]
    with tempfile.TemporaryFile("w+") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)  # fmt: skip
        try:
            deadline = time.monotonic() + start_timeout
            while not _answers(base_url + "/"):
                if process.poll() is not None or time.monotonic() > deadline:
                    output.seek(0)
                    raise RuntimeError(f"prism mock did not start: {output.read()[-2000:]}")
                time.sleep(0.1)
            yield base_url
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
