"""The container image and Kubernetes manifests in ops/: valid, and keeping their promises.

Every manifest is checked offline against the Kubernetes JSON schemas shipped in
the `kubernetes-validate` package (strict: unknown fields are errors), and the
things a schema cannot see are checked against the code: probe paths are real
routes, the worker's termination grace outlasts its drain, every container has
probes, resources and a locked-down security context, and the environment each
container sees is one `Settings.from_env` accepts.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from fastapi.testclient import TestClient

from api.app import create_app
from pao import tokens
from pao.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "ops"
K8S = OPS / "k8s"
CONTAINERFILE = OPS / "Containerfile"
# The oldest Kubernetes minor we support and the newest the schemas know.
K8S_VERSIONS = ("1.29", kubernetes_validate.utils.latest_version())
PROCESSES = {"api", "scheduler", "worker"}

Doc = dict[str, Any]


def _load(path: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _kustomization() -> Doc:
    [doc] = _load(K8S / "kustomization.yaml")
    return doc


def _manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def _resources() -> list[Doc]:
    return [doc for path in _manifest_files() for doc in _load(path)]


def _of_kind(kind: str, docs: list[Doc] | None = None) -> dict[str, Doc]:
    """The base's resources of one kind by name (or those of `docs`, a rendered overlay)."""
    return {d["metadata"]["name"]: d for d in (docs or _resources()) if d["kind"] == kind}


def _pod_specs() -> Iterator[tuple[str, Doc]]:
    for kind in ("Deployment", "Job"):
        for name, doc in _of_kind(kind).items():
            yield name, doc["spec"]["template"]["spec"]


def _container(deployment: str) -> Doc:
    [container] = _of_kind("Deployment")[deployment]["spec"]["template"]["spec"]["containers"]
    return dict(container)


def _env(container: Doc) -> dict[str, str]:
    """The container's literal `env` values (those read from a Secret are left out)."""
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def _process_env(container: Doc, docs: list[Doc] | None = None) -> dict[str, str]:
    """Everything the process sees: image defaults, then envFrom, then env (Kubernetes order),
    with `secretKeyRef`s and `secretRef`s resolved against the manifests' own Secret."""
    configs = _of_kind("ConfigMap", docs)
    secrets = {name: dict(doc["stringData"]) for name, doc in _of_kind("Secret", docs).items()}
    env = dict(re.findall(r"^\s+(PAO_[A-Z_]+)=(\S+)", CONTAINERFILE.read_text(), re.M))
    for ref in container.get("envFrom", []):
        if "configMapRef" in ref:
            env.update(configs[ref["configMapRef"]["name"]]["data"])
        else:
            env.update(secrets[ref["secretRef"]["name"]])
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        else:
            key = entry["valueFrom"]["secretKeyRef"]
            env[entry["name"]] = secrets[key["name"]][key["key"]]
    return env


def _all_containers() -> Iterator[tuple[str, Doc]]:
    for name, spec in _pod_specs():
        for c in spec["containers"]:
            yield name, c


def _named_port(container: Doc, name: str) -> int:
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    assert name in ports, f"{container['name']} has no port named {name!r}: {ports}"
    return int(ports[name])


def _schema_errors(doc: Doc, version: str) -> str | None:
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path)
        return f"{doc['kind']}/{doc['metadata']['name']}: {where}: {exc.message}"
    return None


# --------------------------------------------------------------------------- schemas


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", _manifest_files(), ids=lambda p: p.name)
def test_each_manifest_matches_the_kubernetes_schema(path: Path, version: str) -> None:
    docs = _load(path)
    assert docs, f"{path.name} is empty"
    errors = [e for d in docs if (e := _schema_errors(d, version)) is not None]
    assert errors == []


def test_the_schema_check_rejects_a_misspelt_field() -> None:
    """The validator really is strict: a typo in a probe is caught, not ignored."""
    [doc] = _load(K8S / "worker-deployment.yaml")
    probe = doc["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]
    probe["httpGet"]["pth"] = probe["httpGet"].pop("path")
    error = _schema_errors(doc, K8S_VERSIONS[-1])
    assert error is not None
    assert "pth" in error


def test_the_kustomization_lists_every_manifest_and_nothing_else() -> None:
    listed = _kustomization()["resources"]
    assert sorted(listed) == [p.name for p in _manifest_files()]
    assert len(set(listed)) == len(listed)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (for its kustomize) absent")
def test_the_rendered_kustomization_matches_the_schema() -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    assert len(docs) == len(_resources())
    for version in K8S_VERSIONS:
        assert [e for d in docs if (e := _schema_errors(d, version)) is not None] == []
    for doc in docs:
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "pao"
    images = {
        c["image"]
        for d in docs
        if d["kind"] in ("Deployment", "Job")
        for c in d["spec"]["template"]["spec"]["containers"]
    }
    assert images == {"pao:0.1.0"}


# --------------------------------------------------------------------------- processes


def test_there_is_one_deployment_per_process_and_a_migration_job() -> None:
    commands = {_container(name)["args"][0] for name in _of_kind("Deployment")}
    assert commands == PROCESSES
    # Each names a command the installed `pao` really has.
    installed = {ep.name for ep in entry_points(group="pao.processes")}
    assert installed >= PROCESSES
    [job] = _of_kind("Job").values()
    [migrate] = job["spec"]["template"]["spec"]["containers"]
    assert migrate["args"] == ["migrate"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] in ("OnFailure", "Never")


def test_every_deployment_has_probes_and_resources() -> None:
    for name in _of_kind("Deployment"):
        container = _container(name)
        for probe in ("livenessProbe", "readinessProbe"):
            assert probe in container, (name, probe)
        for bound in ("requests", "limits"):
            assert set(container["resources"][bound]) == {"cpu", "memory"}, (name, bound)


def _probe(container: Doc, kind: str) -> tuple[str, str]:
    get = container[kind]["httpGet"]
    return str(get["path"]), str(get["port"])


def test_api_probes_hit_real_routes_of_the_app() -> None:
    app = create_app(Settings(), database_url="postgresql://unused")
    paths = app.openapi()["paths"]
    routes = {path for path, ops in paths.items() if "get" in ops}
    api = _container("pao-api")
    assert _probe(api, "livenessProbe") == ("/health/live", "http")
    assert _probe(api, "readinessProbe") == ("/health/ready", "http")
    assert {"/health/live", "/health/ready"} <= routes
    # Liveness needs no database (none is reachable here, and the lifespan is not run).
    assert TestClient(app).get("/health/live").status_code == 200
    port = _named_port(api, "http")
    assert Settings.from_env({**_env(api)}).port == port
    # Reachable from the kubelet and the Service.
    assert _env(api)["PAO_HOST"] == "0.0.0.0"  # noqa: S104


def test_scheduler_and_worker_probe_their_metrics_server() -> None:
    for name in ("pao-scheduler", "pao-worker"):
        container = _container(name)
        port = _named_port(container, "metrics")
        assert int(_env(container)["PAO_METRICS_PORT"]) == port
        # The kubelet's probes and the scraper come from outside the pod; the default
        # (loopback) would answer neither.
        assert Settings.from_env(_process_env(container)).metrics_host == "0.0.0.0", name  # noqa: S104
        for kind in ("livenessProbe", "readinessProbe"):
            assert _probe(container, kind) == ("/health/live", "metrics"), (name, kind)
        annotations = _of_kind("Deployment")[name]["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(port)
        assert annotations["prometheus.io/path"] == "/metrics"


def test_the_worker_is_given_time_to_drain_before_sigkill() -> None:
    worker = _of_kind("Deployment")["pao-worker"]["spec"]["template"]["spec"]
    # Set explicitly, so a change of the default cannot silently outgrow the pod's grace.
    grace = Settings.from_env(_env(_container("pao-worker"))).shutdown_grace_seconds
    assert grace == int(_env(_container("pao-worker"))["PAO_SHUTDOWN_GRACE"])
    assert worker["terminationGracePeriodSeconds"] >= grace + 10
    assert worker["terminationGracePeriodSeconds"] > Settings().shutdown_grace_seconds


def test_the_service_and_budgets_select_exactly_their_own_pods() -> None:
    pods = {
        name: d["spec"]["template"]["metadata"]["labels"]
        for name, d in _of_kind("Deployment").items()
    }
    for name, d in _of_kind("Deployment").items():
        assert d["spec"]["selector"]["matchLabels"].items() <= pods[name].items()

    def selected(selector: dict[str, str]) -> list[str]:
        return [n for n, labels in pods.items() if selector.items() <= labels.items()]

    [service] = _of_kind("Service").values()
    assert selected(service["spec"]["selector"]) == ["pao-api"]
    [port] = service["spec"]["ports"]
    assert _named_port(_container("pao-api"), port["targetPort"])

    budgets = _of_kind("PodDisruptionBudget")
    covered = sorted(
        n for b in budgets.values() for n in selected(b["spec"]["selector"]["matchLabels"])
    )
    assert covered == sorted(pods)  # one budget per Deployment, none shared
    for name, budget in budgets.items():
        [target] = selected(budget["spec"]["selector"]["matchLabels"])
        replicas = _of_kind("Deployment")[target]["spec"]["replicas"]
        spec = budget["spec"]
        # A budget that allows no eviction at all would block every node drain.
        if "minAvailable" in spec:
            allowed = replicas - spec["minAvailable"]
        else:
            allowed = spec["maxUnavailable"]
        assert 1 <= allowed < replicas or replicas == 1, name


# --------------------------------------------------------------------------- image, env, security


def _containerfile_user() -> tuple[int, int]:
    users = re.findall(r"^USER\s+(\d+):(\d+)\s*$", CONTAINERFILE.read_text(), re.MULTILINE)
    assert len(users) == 1, "the Containerfile names one numeric USER uid:gid"
    uid, gid = users[0]
    return int(uid), int(gid)


def test_every_pod_runs_locked_down_as_the_image_s_user() -> None:
    uid, gid = _containerfile_user()
    assert uid != 0
    for name, spec in _pod_specs():
        assert spec["automountServiceAccountToken"] is False, name
        pod = spec["securityContext"]
        assert (pod["runAsNonRoot"], pod["runAsUser"], pod["runAsGroup"]) == (True, uid, gid), name
        assert pod["seccompProfile"]["type"] == "RuntimeDefault", name
        mounts: set[str] = set()
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            mounts |= {m["mountPath"] for m in c.get("volumeMounts", [])}
        # The only writable place: the image points PAO_DATA_DIR and temp files there.
        assert mounts == {"/tmp"}, name


def _secret() -> dict[str, str]:
    [secret] = _of_kind("Secret").values()
    return dict(secret["stringData"])


def test_the_secret_holds_placeholders_that_cannot_be_deployed_by_mistake() -> None:
    secret = _secret()
    assert set(secret) == {"DATABASE_URL", "PAO_ADMIN_TOKEN"}
    assert secret["DATABASE_URL"].startswith("postgresql://")
    assert "REPLACE-ME" in secret["DATABASE_URL"]
    # Not a well-formed token: the API refuses to start with it (domain.agents.ensure_admin_token).
    assert "REPLACE-ME" in secret["PAO_ADMIN_TOKEN"]
    assert not tokens.is_well_formed(secret["PAO_ADMIN_TOKEN"])


def test_every_container_uses_the_one_image_and_a_valid_environment() -> None:
    [config] = _of_kind("ConfigMap").values()
    for name, c in _all_containers():
        assert c["image"] == "pao", name  # the kustomization's `images` sets registry and tag
        refs = c["envFrom"]
        assert {"configMapRef": {"name": config["metadata"]["name"]}} in refs, name
        settings = Settings.from_env(_process_env(c))
        assert settings.database_url == _secret()["DATABASE_URL"], name
        assert settings.data_dir == Path("/tmp/pao"), name


def test_only_the_api_is_given_the_admin_token() -> None:
    # The API alone makes sure the admin agent exists; a worker runs tools (MCP servers,
    # HTTP steps) and the scheduler and migration need only the database.
    holders = {name for name, c in _all_containers() if "PAO_ADMIN_TOKEN" in _process_env(c)}
    assert holders == {"pao-api"}
    api = Settings.from_env(_process_env(_container("pao-api")))
    assert api.admin_token == _secret()["PAO_ADMIN_TOKEN"]
    [image] = _kustomization()["images"]
    assert image["name"] == "pao"


def test_the_containerfile_builds_the_package_as_a_non_root_pao_entrypoint() -> None:
    text = CONTAINERFILE.read_text()
    bases = re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE)
    assert bases
    assert all(b == "python:3.11-slim" for b in bases), bases
    assert re.search(r'^ENTRYPOINT \["pao"\]$', text, re.MULTILINE)
    assert re.search(r'^CMD \["api"\]$', text, re.MULTILINE)
    # Every COPY source exists, and together they hold every package the wheel includes.
    copied: set[str] = set()
    for line in re.findall(r"^COPY (?!--from)(.+)$", text, re.MULTILINE):
        *sources, _dest = line.split()
        for src in sources:
            assert (ROOT / src).exists(), src
            copied.add(src)
    pyproject = (ROOT / "pyproject.toml").read_text()
    [include] = re.findall(r"^include = \[(.*)\]$", pyproject, re.MULTILINE)
    packages = {p.strip().strip('"').rstrip("*") for p in include.split(",")}
    assert packages <= copied
    assert {"pyproject.toml", "README.md"} <= copied  # the build reads both
    ports = {int(p) for p in re.findall(r"^EXPOSE (.+)$", text, re.MULTILINE)[0].split()}
    assert ports == {_named_port(_container("pao-api"), "http"), 9464}


# --------------------------------------------------------------------------- the pooler overlay
#
# ops/k8s-pooler is a kustomize overlay of the base. The tests render it themselves, so
# they need no kubectl: the base's resources, the overlay's own, then each patch merged the
# strategic way kustomize merges these (mappings key by key, lists of named items such as
# containers and env by name), then the labels and images. Where kubectl is installed, its
# kustomize renders the overlay too and must agree.

POOLER = OPS / "k8s-pooler"
PGBOUNCER_CONTAINERFILE = OPS / "pgbouncer" / "Containerfile"
LISTENERS = {"pao-api", "pao-worker"}  # the processes that LISTEN (db.warn_if_polling)


def _pooler_kustomization() -> Doc:
    [doc] = _load(POOLER / "kustomization.yaml")
    return doc


def _strategic_merge(base: Any, patch: Any) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            merged[key] = _strategic_merge(base[key], value) if key in base else value
        return merged
    named = (
        isinstance(base, list)
        and isinstance(patch, list)
        and all(isinstance(i, dict) and "name" in i for i in [*base, *patch])
    )
    if named:
        patches = {item["name"]: item for item in patch}
        names = {item["name"] for item in base}
        return [
            _strategic_merge(item, patches[item["name"]]) if item["name"] in patches else item
            for item in base
        ] + [item for item in patch if item["name"] not in names]
    return patch


def _set_images(doc: Doc, images: list[Doc]) -> None:
    tags = {i["name"]: f"{i.get('newName', i['name'])}:{i['newTag']}" for i in images}
    if doc["kind"] in ("Deployment", "Job"):
        for c in doc["spec"]["template"]["spec"]["containers"]:
            c["image"] = tags.get(c["image"], c["image"])


def _render_pooler() -> list[Doc]:
    overlay = _pooler_kustomization()
    base_dir, *own = overlay["resources"]
    assert (POOLER / base_dir).resolve() == K8S
    docs = _resources() + [doc for name in own for doc in _load(POOLER / name)]
    for entry in overlay["patches"]:
        [patch] = _load(POOLER / entry["path"])
        key = (patch["kind"], patch["metadata"]["name"])
        [at] = [i for i, d in enumerate(docs) if (d["kind"], d["metadata"]["name"]) == key]
        docs[at] = _strategic_merge(docs[at], patch)
    for doc in docs:
        for kustomization in (_kustomization(), overlay):
            for label in kustomization["labels"]:
                doc["metadata"].setdefault("labels", {}).update(label["pairs"])
            _set_images(doc, kustomization["images"])
    return docs


def _pooler_container(deployment: str, docs: list[Doc]) -> Doc:
    [container] = _of_kind("Deployment", docs)[deployment]["spec"]["template"]["spec"]["containers"]
    return dict(container)


def _ini(text: str) -> dict[str, dict[str, str]]:
    """pgbouncer.ini's sections (`;` starts a comment line; `key =` is an empty value)."""
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith((";", "#")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current[key.strip()] = value.strip()
    return sections


def _pgbouncer_ini(docs: list[Doc]) -> dict[str, dict[str, str]]:
    return _ini(_of_kind("ConfigMap", docs)["pao-pgbouncer"]["data"]["pgbouncer.ini"])


def test_the_pooler_overlay_lists_every_file_once() -> None:
    overlay = _pooler_kustomization()
    listed = overlay["resources"][1:] + [p["path"] for p in overlay["patches"]]
    present = sorted(p.name for p in POOLER.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == present
    assert len(set(listed)) == len(listed)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_the_rendered_pooler_overlay_matches_the_kubernetes_schema(version: str) -> None:
    docs = _render_pooler()
    # The base's resources, each patched in place, and the pooler's five.
    assert len(docs) == len(_resources()) + 5
    assert [e for d in docs if (e := _schema_errors(d, version)) is not None] == []


def _comparable(docs: list[Doc]) -> list[Doc]:
    """Sorted by kind and name, env lists by name (kustomize puts added entries first)."""
    out = []
    for doc in docs:
        doc = yaml.safe_load(yaml.safe_dump(doc))
        if doc["kind"] in ("Deployment", "Job"):
            for c in doc["spec"]["template"]["spec"]["containers"]:
                c["env"] = sorted(c.get("env", []), key=lambda e: e["name"])
        out.append(doc)
    return sorted(out, key=lambda d: (d["kind"], d["metadata"]["name"]))


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (for its kustomize) absent")
def test_kubectl_renders_the_pooler_overlay_as_the_tests_do() -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(POOLER)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert _comparable([d for d in yaml.safe_load_all(out) if d]) == _comparable(_render_pooler())


def test_behind_pgbouncer_every_process_queries_through_it_and_listens_directly() -> None:
    docs = _render_pooler()
    [service] = [
        s for s in _of_kind("Service", docs).values() if "pgbouncer" in s["metadata"]["name"]
    ]
    [port] = service["spec"]["ports"]
    secret = _of_kind("Secret", docs)["pao-secrets"]["stringData"]
    direct = secret["PAO_LISTEN_DATABASE_URL"]
    assert direct == _secret()["DATABASE_URL"]  # the base's own URL, now for LISTEN alone
    for name in ("pao-api", "pao-scheduler", "pao-worker"):
        settings = Settings.from_env(_process_env(_pooler_container(name, docs), docs))
        assert settings.database_pooler == "transaction", name
        assert settings.listen_database_url == direct, name
        via = urlsplit(settings.database_url or "")
        assert (via.hostname, via.port) == (service["metadata"]["name"], port["port"]), name
        assert (via.username, via.password, via.path) == (
            urlsplit(direct).username,
            urlsplit(direct).password,
            urlsplit(direct).path,
        ), name
    # The API reads the whole Secret; the worker is given the key (the scheduler too,
    # though it does not LISTEN, so every process sees the same three settings).
    for name in LISTENERS:
        assert "PAO_LISTEN_DATABASE_URL" in _process_env(_pooler_container(name, docs), docs)
    # Migrations go straight to PostgreSQL (docs/pgbouncer.md, "Migrations").
    [job] = _of_kind("Job", docs).values()
    [migrate] = job["spec"]["template"]["spec"]["containers"]
    assert Settings.from_env(_process_env(migrate, docs)).database_url == direct
    # Only the API holds the admin token, pooler or not.
    holders = {
        n
        for n, spec in (
            (n, d["spec"]["template"]["spec"]) for n, d in _of_kind("Deployment", docs).items()
        )
        for c in spec["containers"]
        if "PAO_ADMIN_TOKEN" in _process_env(c, docs)
    }
    assert holders == {"pao-api"}


def test_pgbouncer_pools_in_transaction_mode_for_the_direct_database() -> None:
    docs = _render_pooler()
    ini = _pgbouncer_ini(docs)
    bouncer = ini["pgbouncer"]
    assert bouncer["pool_mode"] == "transaction"
    assert bouncer["server_reset_query"] == ""
    assert "extra_float_digits" in bouncer["ignore_startup_parameters"].split(",")
    assert bouncer["auth_type"] == "scram-sha-256"
    # Nothing written to disk: the root filesystem is read-only.
    assert bouncer["unix_socket_dir"] == ""
    assert not {"logfile", "pidfile"} & set(bouncer)
    # [databases] sends every name to the host the direct URL names, TLS as it asks.
    direct = urlsplit(
        _of_kind("Secret", docs)["pao-secrets"]["stringData"]["PAO_LISTEN_DATABASE_URL"]
    )
    target = dict(p.split("=", 1) for p in ini["databases"]["*"].split())
    assert (target["host"], int(target["port"])) == (direct.hostname, direct.port)
    if "sslmode=require" in direct.query:
        assert bouncer["server_tls_sslmode"] in ("require", "verify-ca", "verify-full")
    # It listens where the Service and the pod say.
    container = _pooler_container("pao-pgbouncer", docs)
    assert int(bouncer["listen_port"]) == _named_port(container, "pgbouncer")
    [service] = [
        s for s in _of_kind("Service", docs).values() if "pgbouncer" in s["metadata"]["name"]
    ]
    [port] = service["spec"]["ports"]
    assert port["targetPort"] == "pgbouncer"
    assert bouncer["listen_addr"] == "0.0.0.0"  # noqa: S104
    # Read from the ConfigMap it is given.
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert container["args"] == [f"{mounts['config']}/pgbouncer.ini"]


def test_pgbouncer_knows_the_user_and_password_the_urls_carry() -> None:
    docs = _render_pooler()
    bouncer = _pgbouncer_ini(docs)["pgbouncer"]
    spec = _of_kind("Deployment", docs)["pao-pgbouncer"]["spec"]["template"]["spec"]
    [container] = spec["containers"]
    [auth] = [v for v in spec["volumes"] if "secret" in v]
    mount = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == auth["name"])
    directory, _, key = bouncer["auth_file"].rpartition("/")
    assert directory == mount
    userlist = _of_kind("Secret", docs)[auth["secret"]["secretName"]]["stringData"][key]
    [(user, password)] = re.findall(r'^"([^"]+)" "([^"]*)"$', userlist, re.M)
    for key in ("DATABASE_URL", "PAO_LISTEN_DATABASE_URL"):
        url = urlsplit(_of_kind("Secret", docs)["pao-secrets"]["stringData"][key])
        assert (url.username, url.password) == (user, password), key
    # Placeholders, as in the base: nothing here can be deployed with a known password.
    assert password == "REPLACE-ME"
    # Readable by the pod's group only, which PgBouncer's user is in.
    assert auth["secret"]["defaultMode"] == 0o440
    assert spec["securityContext"]["fsGroup"] == spec["securityContext"]["runAsGroup"]


def test_the_pgbouncer_pod_is_locked_down_probed_and_budgeted() -> None:
    docs = _render_pooler()
    text = PGBOUNCER_CONTAINERFILE.read_text()
    [(uid, gid)] = re.findall(r"^USER\s+(\d+):(\d+)\s*$", text, re.M)
    deployment = _of_kind("Deployment", docs)["pao-pgbouncer"]
    spec = deployment["spec"]["template"]["spec"]
    assert spec["automountServiceAccountToken"] is False
    pod = spec["securityContext"]
    assert (pod["runAsNonRoot"], pod["runAsUser"], pod["runAsGroup"]) == (True, int(uid), int(gid))
    assert pod["seccompProfile"]["type"] == "RuntimeDefault"
    [container] = spec["containers"]
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert all(m["readOnly"] for m in container["volumeMounts"])
    assert container["image"] == "pao-pgbouncer:1.18"
    assert (
        set(container["resources"]["requests"])
        == set(container["resources"]["limits"])
        == {
            "cpu",
            "memory",
        }
    )
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["tcpSocket"]["port"] == "pgbouncer", probe
    # SIGINT (the image's stop signal) is PgBouncer 1.18's safe shutdown.
    assert re.search(r"^STOPSIGNAL SIGINT$", text, re.M)
    assert re.findall(r"^FROM\s+(\S+)", text, re.M) == ["debian:bookworm-slim"]
    # The Service and the budget select the pgbouncer pods and nothing else.
    pods = {
        n: d["spec"]["template"]["metadata"]["labels"]
        for n, d in _of_kind("Deployment", docs).items()
    }

    def selected(selector: dict[str, str]) -> list[str]:
        return [n for n, labels in pods.items() if selector.items() <= labels.items()]

    service = _of_kind("Service", docs)["pao-pgbouncer"]
    assert selected(service["spec"]["selector"]) == ["pao-pgbouncer"]
    assert selected(_of_kind("Service", docs)["pao-api"]["spec"]["selector"]) == ["pao-api"]
    budget = _of_kind("PodDisruptionBudget", docs)["pao-pgbouncer"]["spec"]
    assert selected(budget["selector"]["matchLabels"]) == ["pao-pgbouncer"]
    assert (
        1
        <= deployment["spec"]["replicas"] - budget["minAvailable"]
        < deployment["spec"]["replicas"]
    )
