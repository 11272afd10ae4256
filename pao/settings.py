"""Settings read once from the environment by each entry point and passed down."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pao.errors import PaoError


class SettingsError(PaoError):
    """A configuration variable has an invalid value."""


@dataclass(frozen=True)
class Settings:
    database_url: str | None = None
    data_dir: Path = Path(".pao")
    admin_token: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    default_timezone: str = "Europe/Chisinau"
    tools_file: str | None = None
    cors_origins: tuple[str, ...] = ()
    http_allow: tuple[str, ...] = ()
    pool_min_size: int = 1
    pool_max_size: int = 10
    log_level: str = "info"
    extra: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        return cls(
            database_url=env.get("DATABASE_URL") or None,
            data_dir=Path(env.get("PAO_DATA_DIR") or ".pao"),
            admin_token=env.get("PAO_ADMIN_TOKEN") or None,
            host=env.get("PAO_HOST") or "127.0.0.1",
            port=_int(env, "PAO_PORT", 8080, low=1, high=65535),
            default_timezone=env.get("PAO_DEFAULT_TIMEZONE") or "Europe/Chisinau",
            tools_file=env.get("PAO_TOOLS_FILE") or None,
            cors_origins=_csv(env.get("PAO_CORS_ORIGINS")),
            http_allow=_csv(env.get("PAO_HTTP_ALLOW")),
            pool_min_size=_int(env, "PAO_POOL_MIN_SIZE", 1, low=0, high=1000),
            pool_max_size=_int(env, "PAO_POOL_MAX_SIZE", 10, low=1, high=1000),
            log_level=(env.get("PAO_LOG_LEVEL") or "info").lower(),
        )


def _csv(raw: str | None) -> tuple[str, ...]:
    if not raw:
        return ()
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _int(env: Mapping[str, str], name: str, default: int, *, low: int, high: int) -> int:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, got {raw!r}") from None
    if not low <= value <= high:
        raise SettingsError(f"{name} must be between {low} and {high}, got {value}")
    return value
