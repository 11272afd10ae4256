"""ops/docker-compose.yml and its pooler override: valid Compose files that keep their promises.

Both files are validated offline against the Compose Specification's JSON schema, as
shipped in the `check-jsonschema` package (strict: a misspelt key is an error). What a
schema cannot see is checked against the code: every pao service runs the one image on
one database, `up api` brings up exactly postgres, migrate and the API, the healthchecks
answer (run for real against a server), the worker's stop grace outlasts its drain, no
secret is written in the files, and each container's environment is one
`Settings.from_env` reads. Variables are filled in the way Compose fills them in.
"""

from __future__ import annotations

import asyncio
import configparser
import json
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from functools import cache
from http.server import BaseHTTPRequestHandler, HTTPServer
from importlib.metadata import entry_points
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml
from prometheus_client import CollectorRegistry

from api.app import create_app
from pao import tokens
from pao.probe_server import MetricsServer
from pao.settings import Settings
from tests import pgbouncer as tested_pgbouncer

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "ops"
COMPOSE = OPS / "docker-compose.yml"
POOLER = OPS / "docker-compose.pooler.yml"
PGBOUNCER_INI = OPS / "pgbouncer" / "pgbouncer.ini"
PGBOUNCER_CONTAINERFILE = OPS / "pgbouncer" / "Containerfile"
CONTAINERFILE = OPS / "Containerfile"
PAO_PROCESSES = {"api", "scheduler", "worker"}
PAO_SERVICES = PAO_PROCESSES | {"migrate"}
# The only variables the files read, both required (`${NAME:?message}`): no default secret.
SECRETS = {"POSTGRES_PASSWORD": "0123456789abcdef", "PAO_ADMIN_TOKEN": tokens.new_token()}

Doc = dict[str, Any]


# --------------------------------------------------------------------------- loading


@cache
def _schema() -> Doc:
    """The Compose Specification schema the check-jsonschema package vendors."""
    text = (files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json").read_text()
    schema: Doc = json.loads(text)
    return schema


def _schema_errors(doc: Doc) -> list[str]:
    cls = jsonschema.validators.validator_for(_schema())
    cls.check_schema(_schema())
    return [
        f"{'.'.join(str(p) for p in e.absolute_path)}: {e.message}"
        for e in cls(_schema()).iter_errors(doc)
    ]


def _raw(path: Path) -> Doc:
    """The file as YAML gives it (merge keys applied), unshared so tests may change one part."""
    doc: Doc = json.loads(json.dumps(yaml.safe_load(path.read_text())))
    return doc


class MissingVariable(Exception):
    """A required `${NAME:?message}` whose variable is unset or empty, as Compose refuses it."""


_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[?-])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)


def _fill(text: str, env: Mapping[str, str]) -> str:
    """Compose's interpolation: `$$`, `$NAME`, `${NAME}`, `${NAME:-default}`, `${NAME:?error}`."""

    def one(m: re.Match[str]) -> str:
        if m["escaped"]:
            return "$"
        name = m["braced"] or m["named"]
        value = env.get(name)
        op, arg = m["op"], m["arg"]
        unset = value is None or (value == "" and op is not None and op.startswith(":"))
        if op is not None and op.endswith("?") and unset:
            raise MissingVariable(f"{name}: {arg}")
        if op is not None and op.endswith("-") and unset:
            return str(arg)
        return value or ""

    return _VARIABLE.sub(one, text)


def _interpolate(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, dict):
        return {k: _interpolate(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, env) for v in node]
    if isinstance(node, str):
        return _fill(node, env)
    return node


def _merge(base: Any, override: Any) -> Any:
    """Compose's merge of a later file into an earlier one, for mappings (all the override uses)."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = _merge(base[key], value) if key in base else value
        return merged
    return override


def _project(*paths: Path, env: Mapping[str, str] = SECRETS) -> Doc:
    """The files merged in order and interpolated, as `docker compose config` would see them."""
    merged: Doc = {}
    for path in paths:
        raw = {k: v for k, v in _raw(path).items() if not k.startswith("x-")}
        merged = _merge(merged, raw)
    project: Doc = _interpolate(merged, env)
    return project


def _services(*paths: Path) -> dict[str, Doc]:
    services: dict[str, Doc] = _project(*(paths or (COMPOSE,)))["services"]
    return services


def _containerfile_env(path: Path = CONTAINERFILE) -> dict[str, str]:
    return dict(re.findall(r"^\s+(PAO_[A-Z_]+)=(\S+)", path.read_text(), re.M))


def _process_env(service: Doc) -> dict[str, str]:
    """What the process sees: the image's ENV, then the service's environment."""
    env = _containerfile_env()
    env.update({k: str(v) for k, v in service.get("environment", {}).items()})
    return env


def _settings(service: Doc) -> Settings:
    return Settings.from_env(_process_env(service))


def _seconds(duration: str) -> int:
    """A Compose duration such as `40s`, `1m30s` or `2m`, in whole seconds."""
    parts = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", duration)
    assert duration, "an empty duration"
    assert parts is not None, duration
    return int(parts[1] or 0) * 60 + int(parts[2] or 0)


def _url_check(service: Doc) -> str:
    """The URL a `CMD python -c ...urlopen(...)` healthcheck asks."""
    test = service["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"], test
    [url] = re.findall(r"urlopen\('([^']+)'", test[3])
    return str(url)


def _walk_strings(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield str(k)
            yield from _walk_strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk_strings(v)
    elif isinstance(node, str):
        yield node


# --------------------------------------------------------------------------- schema


@pytest.mark.parametrize("path", [COMPOSE, POOLER], ids=lambda p: p.name)
def test_each_file_matches_the_compose_specification(path: Path) -> None:
    assert _schema()["title"] == "Compose Specification"
    assert _schema_errors(_raw(path)) == []


def test_the_merged_pooler_project_matches_the_specification_too() -> None:
    assert _schema_errors(_project(COMPOSE, POOLER)) == []


def test_the_schema_check_rejects_a_misspelt_key_and_an_unknown_condition() -> None:
    """The validator really is strict: a typo is caught, not ignored."""
    doc = _raw(COMPOSE)
    api = doc["services"]["api"]
    api["helthcheck"] = api.pop("healthcheck")
    assert any("helthcheck" in e for e in _schema_errors(doc))
    doc = _raw(COMPOSE)
    doc["services"]["worker"]["depends_on"]["migrate"]["condition"] = "service_finished"
    assert any(e.startswith("services.worker.depends_on") for e in _schema_errors(doc))


# --------------------------------------------------------------------------- variables and secrets


def _variables(path: Path) -> set[tuple[str, str | None]]:
    """Each variable the file reads, with its operator (`:?`, `:-`, ... or None)."""
    return {
        (m["braced"] or m["named"], m["op"])
        for text in _walk_strings(_raw(path))
        for m in _VARIABLE.finditer(text)
        if not m["escaped"]
    }


def test_the_files_read_only_the_two_secrets_and_require_both() -> None:
    assert {name for name, _ in _variables(COMPOSE)} == set(SECRETS)
    assert {name for name, _ in _variables(POOLER)} == {"POSTGRES_PASSWORD"}
    for path in (COMPOSE, POOLER):
        # Required, never defaulted: a forgotten variable stops `up` instead of running
        # with a password or token everybody can read here.
        assert {op for _, op in _variables(path)} == {":?"}, path.name


@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_nothing_starts_without_either_secret_and_the_error_says_where_to_set_it(
    missing: str,
) -> None:
    env = {k: v for k, v in SECRETS.items() if k != missing}
    with pytest.raises(MissingVariable, match=rf"^{missing}: set {missing} in ops/\.env"):
        _project(COMPOSE, env=env)
    with pytest.raises(MissingVariable, match=missing):
        _project(COMPOSE, env={**env, missing: ""})


def test_no_secret_is_written_in_the_files() -> None:
    for path in (COMPOSE, POOLER):
        for service_name, service in _raw(path)["services"].items():
            for key, value in service.get("environment", {}).items():
                text = str(value)
                if re.search(r"PASSWORD|TOKEN|SECRET", key):
                    assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]*\}", text), (service_name, key)
                if text.startswith("postgresql://"):
                    # user:password@ with the password a reference, never a value
                    reference = r"postgresql://\w+:\$\{POSTGRES_PASSWORD:\?[^}]*\}@"
                    assert re.match(reference, text), (service_name, key)


def test_only_the_api_is_given_the_admin_token() -> None:
    holders = {
        name
        for name, s in _services(COMPOSE, POOLER).items()
        if "PAO_ADMIN_TOKEN" in s.get("environment", {})
    }
    assert holders == {"api"}
    assert _settings(_services()["api"]).admin_token == SECRETS["PAO_ADMIN_TOKEN"]


def _settings_names() -> set[str]:
    """Every variable `Settings.from_env` reads, found by asking it."""
    read: set[str] = set()

    class Recording(dict[str, str]):
        def get(self, key: str, default: Any = None) -> Any:
            read.add(key)
            return super().get(key, default)

    Settings.from_env(Recording())
    return read


def test_every_pao_variable_is_a_setting_pao_reads() -> None:
    names = _settings_names()
    assert {"DATABASE_URL", "PAO_LISTEN_DATABASE_URL", "PAO_SHUTDOWN_GRACE"} <= names
    for path in (COMPOSE, POOLER):
        for name in PAO_SERVICES:
            service = _services(COMPOSE, path)[name]
            unknown = set(service.get("environment", {})) - names
            assert unknown == set(), (path.name, name)
            _settings(service)  # and every value is one it accepts


# --------------------------------------------------------------------------- services


def test_every_pao_service_runs_the_one_image_on_the_one_database() -> None:
    services = _services()
    pao = {name for name, s in services.items() if s["image"].split(":")[0] == "pao"}
    assert pao == PAO_SERVICES
    images = {services[n]["image"] for n in pao}
    builds = {json.dumps(services[n]["build"], sort_keys=True) for n in pao}
    assert len(images) == 1
    assert len(builds) == 1  # so Compose builds the image whichever service asks first
    # The tag is the Kubernetes base's and the package's version.
    [k8s_image] = yaml.safe_load((OPS / "k8s" / "kustomization.yaml").read_text())["images"]
    [version] = re.findall(r'^version = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.M)
    assert images == {f"pao:{k8s_image['newTag']}"} == {f"pao:{version}"}
    build = services["api"]["build"]
    assert (COMPOSE.parent / build["context"]).resolve() == ROOT
    assert (ROOT / build["dockerfile"]).resolve() == CONTAINERFILE

    urls = {_settings(services[n]).database_url for n in pao}
    assert len(urls) == 1
    url = urlsplit(urls.pop() or "")
    postgres = services["postgres"]["environment"]
    assert (url.hostname, url.port) == ("postgres", 5432)
    assert url.username == postgres["POSTGRES_USER"]
    assert url.password == postgres["POSTGRES_PASSWORD"] == SECRETS["POSTGRES_PASSWORD"]
    assert url.path == "/" + postgres["POSTGRES_DB"]


def test_each_service_runs_a_command_the_installed_pao_has() -> None:
    services = _services()
    installed = {ep.name for ep in entry_points(group="pao.processes")}
    assert installed >= PAO_PROCESSES
    for name in PAO_PROCESSES:
        assert services[name]["command"] == [name]
    assert services["migrate"]["command"] == ["migrate"]
    assert "entrypoint" not in {k for n in PAO_SERVICES for k in services[n]}  # `pao`, the image's


def _needs(services: dict[str, Doc], name: str) -> set[str]:
    """`name` and everything `docker compose up name` starts with it (depends_on, transitively)."""
    seen = {name}
    for dep in services[name].get("depends_on", {}):
        seen |= _needs(services, dep)
    return seen


def test_up_api_brings_up_postgres_migrate_and_the_api_in_that_order() -> None:
    services = _services()
    assert _needs(services, "api") == {"postgres", "migrate", "api"}
    assert _needs(services, "worker") == {"postgres", "migrate", "worker"}
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in PAO_PROCESSES:
        assert services[name]["depends_on"] == {
            "migrate": {"condition": "service_completed_successfully"}
        }, name


def test_postgres_is_ready_only_when_it_listens_on_tcp_and_keeps_its_data() -> None:
    doc = _project(COMPOSE)
    postgres = doc["services"]["postgres"]
    image, major = postgres["image"].split(":")
    assert image == "postgres"
    assert int(major) >= 13  # the oldest PostgreSQL pao supports
    test = postgres["healthcheck"]["test"]
    assert test[:2] == ["CMD", "pg_isready"]
    env = postgres["environment"]
    # Over TCP: the image's initialisation server listens on the socket only.
    assert {"--host=127.0.0.1", f"--username={env['POSTGRES_USER']}"} <= set(test)
    assert f"--dbname={env['POSTGRES_DB']}" in test
    [volume] = postgres["volumes"]
    name, target = volume.split(":")
    assert name in doc["volumes"]
    assert target == "/var/lib/postgresql/data"


def test_there_are_two_workers_and_one_of_each_other_service() -> None:
    services = _services()
    for name, service in services.items():
        replicas = service.get("deploy", {}).get("replicas", 1)
        assert replicas == (2 if name == "worker" else 1), name
        assert "scale" not in service, name
        # A fixed container name would make a second replica impossible.
        assert "container_name" not in service, name


def test_long_running_services_restart_and_the_migration_runs_once() -> None:
    services = _services(COMPOSE, POOLER)
    for name, service in services.items():
        expected = "no" if name == "migrate" else "unless-stopped"
        assert service["restart"] == expected, name
        assert ("healthcheck" in service) == (name != "migrate"), name


def test_the_api_is_published_on_its_port_and_checked_on_readiness() -> None:
    api = _services()["api"]
    settings = _settings(api)
    assert settings.host == "0.0.0.0"  # noqa: S104  (reachable through the published port)
    [published] = api["ports"]
    host_ip, host_port, container_port = published.split(":")
    assert host_ip == "127.0.0.1"
    assert int(container_port) == settings.port
    assert int(host_port) == settings.port
    url = urlsplit(_url_check(api))
    assert (url.hostname, url.port, url.path) == ("127.0.0.1", settings.port, "/health/ready")
    paths = create_app(Settings(), database_url="postgresql://unused").openapi()["paths"]
    assert "get" in paths["/health/ready"]


def test_scheduler_and_worker_are_checked_on_their_metrics_server() -> None:
    for name in ("scheduler", "worker"):
        service = _services()[name]
        settings = _settings(service)
        assert int(service["environment"]["PAO_METRICS_PORT"]) == settings.metrics_port
        url = urlsplit(_url_check(service))
        assert (url.hostname, url.port, url.path) == (
            "127.0.0.1",
            settings.metrics_port,
            "/health/live",
        ), name
        # The check runs inside the container: loopback (the default) or every address.
        assert settings.metrics_host in ("127.0.0.1", "0.0.0.0"), name  # noqa: S104


def test_the_healthchecks_python_is_the_image_s_own() -> None:
    """The image has no curl; `python` on its PATH is the venv pao is installed in."""
    assert re.search(r"^ENV PATH=/opt/pao/bin:\$PATH", CONTAINERFILE.read_text(), re.M)
    assert "/opt/pao" in re.findall(r"^RUN python -m venv (\S+)", CONTAINERFILE.read_text(), re.M)
    for name in PAO_PROCESSES:
        assert _services()[name]["healthcheck"]["test"][1] == "python", name


def _run_check(service: Doc, url: str) -> int:
    """The service's healthcheck command, run here against `url` instead."""
    code = service["healthcheck"]["test"][3].replace(_url_check(service), url)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30).returncode


def test_the_metrics_healthcheck_passes_against_the_real_probe_server() -> None:
    worker = _services()["worker"]

    async def check() -> tuple[int, int]:
        server = MetricsServer(CollectorRegistry())
        assert await server.start("127.0.0.1", 0)
        base = f"http://127.0.0.1:{server.port}"
        try:
            live = await asyncio.to_thread(_run_check, worker, base + "/health/live")
            missing = await asyncio.to_thread(_run_check, worker, base + "/health/nowhere")
        finally:
            await server.close()
        return live, missing

    assert asyncio.run(check()) == (0, 1)


def test_the_readiness_check_fails_on_503_and_on_no_answer() -> None:
    """urlopen raises on anything but a 2xx, so a not-ready API is unhealthy."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/ok" else 503)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    api = _services()["api"]
    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        assert _run_check(api, base + "/ok") == 0
        assert _run_check(api, base + "/health/ready") == 1
    finally:
        server.shutdown()
        server.server_close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    assert _run_check(api, f"http://127.0.0.1:{closed}/health/ready") == 1


def test_the_worker_is_given_time_to_drain_before_sigkill() -> None:
    services = _services()
    worker = services["worker"]
    grace = _settings(worker).shutdown_grace_seconds
    # Set explicitly, so a change of the default cannot silently outgrow the stop grace.
    assert grace == int(worker["environment"]["PAO_SHUTDOWN_GRACE"])
    assert _seconds(worker["stop_grace_period"]) >= grace + 10
    assert _seconds(worker["stop_grace_period"]) > Settings().shutdown_grace_seconds
    for name in ("api", "scheduler", "postgres"):
        assert _seconds(services[name]["stop_grace_period"]) >= 10, name


def test_pao_containers_are_locked_down_like_the_pods() -> None:
    data_dir = Path(_containerfile_env()["PAO_DATA_DIR"])
    for name, service in _services(COMPOSE, POOLER).items():
        if name == "postgres":
            continue  # the official image starts as root and drops to its own user
        assert service["read_only"] is True, name
        assert service["tmpfs"] == ["/tmp"], name
        assert service["cap_drop"] == ["ALL"], name
        assert service["security_opt"] == ["no-new-privileges:true"], name
        assert "user" not in service, name  # the image's own non-root user
    # The only writable place holds the data directory.
    assert data_dir.is_relative_to("/tmp")


# --------------------------------------------------------------------------- the pooler override


def _ini(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return parser


def _databases_target(ini: configparser.ConfigParser) -> tuple[str, int]:
    params = dict(p.split("=", 1) for p in ini["databases"]["*"].split())
    return params["host"], int(params["port"])


def test_the_override_only_adds_pgbouncer_and_changes_mappings() -> None:
    """What _merge does is what Compose does: mappings merge key by key."""
    base, override = _raw(COMPOSE)["services"], _raw(POOLER)["services"]
    assert set(override) - set(base) == {"pgbouncer"}
    for name in set(override) & set(base):
        assert set(override[name]) == {"environment", "depends_on"}, name
        assert all(isinstance(v, dict) for v in override[name].values()), name
    pooled = _services(COMPOSE, POOLER)
    for name in PAO_PROCESSES:
        # What the base sets and the override does not is kept.
        kept = set(base[name]["environment"]) - set(override[name]["environment"])
        assert kept <= set(pooled[name]["environment"]), name


def test_behind_pgbouncer_every_process_queries_through_it_and_listens_directly() -> None:
    pooled = _services(COMPOSE, POOLER)
    ini = _ini(PGBOUNCER_INI.read_text())
    direct = _settings(_services()["api"]).database_url
    for name in PAO_PROCESSES:
        settings = _settings(pooled[name])
        assert settings.database_pooler == "transaction", name
        assert settings.listen_database_url == direct, name
        via = urlsplit(settings.database_url or "")
        assert (via.hostname, via.port) == ("pgbouncer", int(ini["pgbouncer"]["listen_port"]))
        # The same user, password and database as the direct URL; only the address differs.
        assert via._replace(netloc="") == urlsplit(direct or "")._replace(netloc="")
        assert (via.username, via.password) == (
            urlsplit(direct or "").username,
            urlsplit(direct or "").password,
        )
        assert pooled[name]["depends_on"] == {
            "migrate": {"condition": "service_completed_successfully"},
            "pgbouncer": {"condition": "service_healthy"},
        }, name
    # Migrations stay direct (docs/pgbouncer.md, "Migrations").
    assert _settings(pooled["migrate"]).database_url == direct
    assert _settings(pooled["migrate"]).database_pooler == "none"
    # PgBouncer sends everything to the postgres service the direct URL names.
    target = urlsplit(direct or "")
    assert _databases_target(ini) == (target.hostname, target.port)
    assert _needs(pooled, "api") == {"postgres", "migrate", "pgbouncer", "api"}


def test_the_pgbouncer_config_is_the_tested_one_in_transaction_mode() -> None:
    ours = _ini(PGBOUNCER_INI.read_text())["pgbouncer"]
    tested = _ini(
        tested_pgbouncer.INI.format(
            host="h", port=1, listen_port=2, pool_mode="transaction", dir="/d"
        )
    )["pgbouncer"]
    assert ours["pool_mode"] == "transaction"
    assert ours["server_reset_query"] == ""
    assert "extra_float_digits" in ours["ignore_startup_parameters"].split(",")
    # Everything the test suite's PgBouncer runs with, but where it listens, how it
    # authenticates and where it logs, is the same here.
    local = {"listen_addr", "listen_port", "auth_type", "auth_file", "logfile", "pidfile"}
    for key in set(tested) - local:
        assert ours[key] == tested[key], key
    # Nothing written to disk (the root filesystem is read-only), and every address.
    assert ours["unix_socket_dir"] == ""
    assert not {"logfile", "pidfile"} & set(ours)
    assert ours["listen_addr"] == "0.0.0.0"  # noqa: S104
    assert ours["auth_type"] == "scram-sha-256"


def test_the_pgbouncer_service_writes_a_private_user_list_from_the_password(
    tmp_path: Path,
) -> None:
    pgbouncer = _services(COMPOSE, POOLER)["pgbouncer"]
    ini = _ini(PGBOUNCER_INI.read_text())["pgbouncer"]
    auth_file = ini["auth_file"]
    assert auth_file.startswith("/tmp/")  # the one writable place
    [mount] = pgbouncer["volumes"]
    source, target, mode = mount.split(":")
    assert (COMPOSE.parent / source).resolve() == PGBOUNCER_INI
    assert (target, mode) == ("/etc/pgbouncer/pgbouncer.ini", "ro")
    shell, flag, script = pgbouncer["entrypoint"]
    assert (shell, flag) == ("sh", "-c")
    assert script.endswith(f"exec pgbouncer {target}")
    here = tmp_path / "userlist.txt"
    script = script.replace(auth_file, str(here)).replace(f"exec pgbouncer {target}", "true")
    password = SECRETS["POSTGRES_PASSWORD"]
    subprocess.run(
        ["sh", "-c", script],
        env={**pgbouncer["environment"], "PATH": "/usr/bin:/bin"},
        check=True,
        timeout=30,
    )
    assert here.read_text() == f'"pao" "{password}"\n'
    assert here.stat().st_mode & 0o777 == 0o600
    assert pgbouncer["environment"] == {"POSTGRES_PASSWORD": password}


def test_the_pgbouncer_image_and_service_stop_safely_as_a_non_root_user() -> None:
    pgbouncer = _services(COMPOSE, POOLER)["pgbouncer"]
    text = PGBOUNCER_CONTAINERFILE.read_text()
    # Debian 12's package: the PgBouncer (1.18) tests/acceptance/test_pgbouncer.py runs.
    assert re.findall(r"^FROM\s+(\S+)", text, re.M) == ["debian:bookworm-slim"]
    assert "apt-get install -y --no-install-recommends pgbouncer" in text
    [(uid, gid)] = re.findall(r"^USER\s+(\d+):(\d+)\s*$", text, re.M)
    assert int(uid) != 0
    assert int(gid) != 0
    # 1.18 drops every connection on SIGTERM; SIGINT lets transactions finish.
    assert re.search(r"^STOPSIGNAL SIGINT$", text, re.M)
    assert pgbouncer["stop_signal"] == "SIGINT"
    assert (COMPOSE.parent / pgbouncer["build"]["context"]).resolve() == (
        PGBOUNCER_CONTAINERFILE.parent
    )
    assert pgbouncer["build"]["dockerfile"] == PGBOUNCER_CONTAINERFILE.name
    [expose] = re.findall(r"^EXPOSE (\d+)$", text, re.M)
    assert int(expose) == int(_ini(PGBOUNCER_INI.read_text())["pgbouncer"]["listen_port"])
    assert pgbouncer["healthcheck"]["test"][-1].endswith(f"/127.0.0.1/{expose}")
    assert pgbouncer["depends_on"] == {"postgres": {"condition": "service_healthy"}}
