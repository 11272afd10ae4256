"""Settings read once from the environment by each entry point and passed down."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from pao.costs import CostError, parse_cost
from pao.errors import PaoError


class SettingsError(PaoError):
    """A configuration variable has an invalid value."""


@dataclass(frozen=True)
class Settings:
    database_url: str | None = None
    # "transaction": DATABASE_URL is a transaction-mode pooler (PgBouncer); docs/pgbouncer.md.
    database_pooler: str = "none"
    # A direct URL for LISTEN (and nothing else), for when DATABASE_URL is such a pooler.
    listen_database_url: str | None = None
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
    retention_days: int = 30
    lookahead_seconds: int = 5
    scheduler_tick_ms: int = 500
    retry_base_seconds: int = 5
    retry_cap_seconds: int = 3600
    worker_concurrency: int = 4
    worker_pool_size: int = 0  # 0: twice the concurrency plus two
    lease_seconds: int = 30
    shutdown_grace_seconds: int = 25
    run_timeout_seconds: int = 3600
    rate_limit_per_minute: int = 1200
    auth_failures_per_minute: int = 20
    max_active_tasks: int = 1000
    max_occurrences_per_hour: int = 60_000
    metrics_port: int = 9464
    # Loopback unless configured: the k8s manifests set 0.0.0.0 for the kubelet's probes.
    metrics_host: str = "127.0.0.1"
    log_format: str = "text"
    stream_heartbeat_seconds: float = 15.0
    # A stream ends after this long (the client reconnects with Last-Event-ID), and one
    # agent may hold at most this many open at once.
    stream_max_seconds: float = 3600.0
    streams_per_agent: int = 10
    # How many generations a chain of events may run (an event published by a run that an
    # event triggered is one hop further).
    event_max_hops: int = 5
    # A step's rendered input and its stored output, in bytes of JSON. http.request returns a
    # JSON response twice (as `body` and as `json`), so the output cap is over twice its 10 MiB.
    step_input_max_bytes: int = 1_048_576
    step_output_max_bytes: int = 33_554_432
    # Peers whose X-Forwarded-For / X-Forwarded-Proto are believed (uvicorn's
    # forwarded_allow_ips): addresses or CIDRs, "*" for any.
    forwarded_allow_ips: tuple[str, ...] = ("127.0.0.1",)
    # The largest asset, and the asset bytes one agent may keep (pao.domain.assets).
    asset_max_bytes: int = 1 << 30
    asset_quota_bytes: int = 10 << 30
    # The key of signed asset links; unset: one made on first use and kept in the database,
    # so every API replica signs and checks links alike.
    asset_link_secret: str | None = None
    # Uploads one agent may stream at once, across every API replica (each holds a
    # connection and a transaction while its client sends).
    uploads_per_agent: int = 2
    # What one call of a built-in tool costs, by name (PAO_TOOL_COSTS="log=0.5,sleep=0"):
    # charged before each step that calls it, against budgets. Unlisted tools are free.
    tool_costs: tuple[tuple[str, Decimal], ...] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        return cls(
            database_url=env.get("DATABASE_URL") or None,
            database_pooler=_choice(
                env, "PAO_DATABASE_POOLER", "none", ("none", "session", "transaction")
            ),
            listen_database_url=env.get("PAO_LISTEN_DATABASE_URL") or None,
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
            retention_days=_int(env, "PAO_RETENTION_DAYS", 30, low=1, high=36_500),
            lookahead_seconds=_int(env, "PAO_LOOKAHEAD_SECONDS", 5, low=1, high=3600),
            scheduler_tick_ms=_int(env, "PAO_SCHEDULER_TICK_MS", 500, low=10, high=60_000),
            retry_base_seconds=_int(env, "PAO_RETRY_BASE_SECONDS", 5, low=0, high=86_400),
            retry_cap_seconds=_int(env, "PAO_RETRY_CAP_SECONDS", 3600, low=1, high=7 * 86_400),
            worker_concurrency=_int(env, "PAO_WORKER_CONCURRENCY", 4, low=1, high=1000),
            worker_pool_size=_int(env, "PAO_WORKER_POOL_SIZE", 0, low=0, high=1000),
            lease_seconds=_int(env, "PAO_LEASE_SECONDS", 30, low=3, high=3600),
            shutdown_grace_seconds=_int(env, "PAO_SHUTDOWN_GRACE", 25, low=0, high=3600),
            run_timeout_seconds=_int(env, "PAO_RUN_TIMEOUT", 3600, low=1, high=7 * 86_400),
            rate_limit_per_minute=_int(
                env, "PAO_RATE_LIMIT_PER_MINUTE", 1200, low=0, high=10_000_000
            ),
            auth_failures_per_minute=_int(
                env, "PAO_AUTH_FAILURES_PER_MINUTE", 20, low=0, high=10_000_000
            ),
            max_active_tasks=_int(env, "PAO_MAX_ACTIVE_TASKS", 1000, low=0, high=10_000_000),
            max_occurrences_per_hour=_int(
                env, "PAO_MAX_OCCURRENCES_PER_HOUR", 60_000, low=0, high=1_000_000_000
            ),
            metrics_port=_int(env, "PAO_METRICS_PORT", 9464, low=0, high=65535),
            metrics_host=env.get("PAO_METRICS_HOST") or "127.0.0.1",
            log_format=_choice(env, "PAO_LOG_FORMAT", "text", ("text", "json")),
            stream_heartbeat_seconds=_float(
                env, "PAO_STREAM_HEARTBEAT_SECONDS", 15.0, low=0.05, high=3600
            ),
            stream_max_seconds=_float(env, "PAO_STREAM_MAX_SECONDS", 3600.0, low=1, high=86_400),
            streams_per_agent=_int(env, "PAO_STREAMS_PER_AGENT", 10, low=1, high=10_000),
            event_max_hops=_int(env, "PAO_EVENT_MAX_HOPS", 5, low=0, high=100),
            step_input_max_bytes=_int(
                env, "PAO_STEP_INPUT_MAX_BYTES", 1_048_576, low=1024, high=1_073_741_824
            ),
            step_output_max_bytes=_int(
                env, "PAO_STEP_OUTPUT_MAX_BYTES", 33_554_432, low=1024, high=1_073_741_824
            ),
            forwarded_allow_ips=_csv(env.get("PAO_FORWARDED_ALLOW_IPS") or "127.0.0.1"),
            asset_max_bytes=_int(env, "PAO_ASSET_MAX_BYTES", 1 << 30, low=1, high=1 << 40),
            asset_quota_bytes=_int(env, "PAO_ASSET_QUOTA_BYTES", 10 << 30, low=0, high=1 << 50),
            asset_link_secret=_secret(env, "PAO_ASSET_LINK_SECRET"),
            uploads_per_agent=_int(env, "PAO_UPLOADS_PER_AGENT", 2, low=1, high=10_000),
            tool_costs=_costs(env, "PAO_TOOL_COSTS"),
        )


def _csv(raw: str | None) -> tuple[str, ...]:
    if not raw:
        return ()
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _secret(env: Mapping[str, str], name: str) -> str | None:
    raw = env.get(name)
    if not raw:
        return None
    if len(raw) < 32:
        raise SettingsError(
            f"{name} must be at least 32 characters (e.g. `openssl rand -hex 32`), got {len(raw)}"
        )
    return raw


def _costs(env: Mapping[str, str], name: str) -> tuple[tuple[str, Decimal], ...]:
    """`tool=cost` pairs, comma-separated; each tool named once."""
    found: dict[str, Decimal] = {}
    for part in _csv(env.get(name)):
        tool, eq, raw = part.partition("=")
        tool = tool.strip()
        if not eq or not tool:
            raise SettingsError(f"{name}: {part!r} is not tool=cost, e.g. log=0.5")
        if tool in found:
            raise SettingsError(f"{name}: {tool!r} is given twice; give each tool once")
        try:
            found[tool] = parse_cost(raw, f"{name}: {tool}")
        except CostError as exc:
            raise SettingsError(exc.message) from None
    return tuple(sorted(found.items()))


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


def _choice(env: Mapping[str, str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    raw = (env.get(name) or default).strip().lower()
    if raw not in allowed:
        raise SettingsError(f"{name} must be one of {', '.join(allowed)}, got {raw!r}")
    return raw


def _float(env: Mapping[str, str], name: str, default: float, *, low: float, high: float) -> float:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number of seconds, got {raw!r}") from None
    if not low <= value <= high:
        raise SettingsError(f"{name} must be between {low:g} and {high:g}, got {raw}")
    return value
