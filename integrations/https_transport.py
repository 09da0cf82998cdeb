"""The HTTPS transport: an agency file POSTed to the agency's endpoint.

The bearer token comes from the environment variable the agency's config names in
`token_env` (never from config.toml). Timeouts, connection errors and 5xx answers are
retried with tenacity (exponential backoff, `attempts` tries); a 4xx means the agency
refused the file itself, which another try will not fix, so it fails at once.
The file name travels in `Content-Disposition` and `X-File-Name`, the SHA-256 of the body
in `X-Content-SHA256`, so the agency can store it under our name and check it arrived whole.
"""

from __future__ import annotations

import hashlib
import os

import httpx
from tenacity import (
    retry,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from reminder.config import AgencyConfig, Config
from reminder.errors import ConfigError, TransportError
from reminder.ports import TransportResult


class RetryableTransportError(TransportError):
    """A failure worth another try: timeout, dropped connection, 5xx."""


class HttpsTransport:
    """Implements AgencyTransport with an HTTP POST per file."""

    name = "https"

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout: float = 30.0,
        attempts: int = 4,
        backoff: float = 1.0,
    ) -> None:
        self.url = url
        self._token = token
        self.timeout = timeout
        self.attempts = attempts
        self.backoff = backoff

    def __repr__(self) -> str:
        return f"HttpsTransport(url={self.url!r}, token='***')"

    @classmethod
    def from_config(cls, config: Config, agency: AgencyConfig) -> HttpsTransport:
        extra = agency.model_extra or {}
        field = f"agencies.{agency.id}"
        url = extra.get("url")
        if not url:
            raise ConfigError(f"{field}.url", "the https transport needs a url", config.source)
        token_env = extra.get("token_env")
        if not token_env:
            raise ConfigError(f"{field}.token_env", "name the token's environment variable")
        token = os.environ.get(str(token_env))
        if not token:
            raise ConfigError(
                f"{field}.token_env", f"environment variable {token_env} is not set"
            )
        return cls(
            str(url),
            token,
            timeout=float(extra.get("timeout", 30.0)),
            attempts=int(extra.get("attempts", 4)),
        )

    def deliver(self, file_name: str, content: bytes) -> TransportResult:
        sender = retry(
            retry=retry_if_exception_type(RetryableTransportError),
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential(multiplier=self.backoff, max=30),
            reraise=True,
        )(self._post)
        return sender(file_name, content)

    def _post(self, file_name: str, content: bytes) -> TransportResult:
        headers = {
            "Authorization": f"Bearer {self._token}",
            "Content-Type": "text/csv" if file_name.endswith(".csv") else "application/json",
            "Content-Disposition": f'attachment; filename="{file_name}"',
            "X-File-Name": file_name,
            "X-Content-SHA256": hashlib.sha256(content).hexdigest(),
        }
        try:
            response = httpx.post(self.url, content=content, headers=headers, timeout=self.timeout)
        except httpx.TransportError as exc:  # timeouts, refused or dropped connections
            raise RetryableTransportError(f"POST {self.url}: {type(exc).__name__}") from exc
        if response.status_code >= 500:
            raise RetryableTransportError(f"POST {self.url}: HTTP {response.status_code}")
        if response.status_code >= 400:
            raise TransportError(
                f"POST {self.url}: the agency refused {file_name} (HTTP {response.status_code})"
            )
        reference = response.headers.get("Location") or response.headers.get("X-Request-Id")
        return TransportResult(location=f"{self.url}#{file_name}", reference=reference)
