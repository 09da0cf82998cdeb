"""Files shipped with the package: the default config.toml and the message templates.

In a wheel they live under `reminder/_bundled/`; in a source checkout (editable install,
tests) they are the repository's own `config.toml` and `templates/`.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
_BUNDLED = _PACKAGE / "_bundled"
_CHECKOUT = _PACKAGE.parent


def bundled_config_path() -> Path:
    """The default config.toml a new user starts from."""
    bundled = _BUNDLED / "config.toml"
    return bundled if bundled.exists() else _CHECKOUT / "config.toml"


def bundled_templates_dir() -> Path:
    """The default message templates (templates/<channel>/<locale>/<stage>.<ext>)."""
    bundled = _BUNDLED / "templates"
    return bundled if bundled.exists() else _CHECKOUT / "templates"
