"""Checks of the deployment files: docker-compose.yml, .env.example, Dockerfile, .dockerignore.

No Docker engine is needed. The security properties are checked on the YAML parsed with PyYAML
(anchors and `<<` merge keys resolved); each check is a function that takes the parsed dict and
returns a list of problems, so the negative tests can feed it a mutated copy. A real compose
parser (`docker-compose` 1.29 from Debian's package, or `docker compose` v2) validates the file
with the variables of .env.example; `config` does not talk to an engine.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

ALLOWED_HOST_IPS = {"127.0.0.1"}
RAY_SERVICES = {"ray-head", "ray-worker", "hps"}
SECRET_MARKERS = ("PASSWORD", "SECRET", "TOKEN", "ACCESS_KEY")
# Container ports that must never be published: PostgreSQL, Ray GCS, MinIO S3 API.
NEVER_PUBLISHED = {5432, 6379, 9000}

# ${VAR}, ${VAR:?msg}, ${VAR?msg}, ${VAR:-default}, ${VAR-default}, $VAR; $$ escapes a dollar.
_INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?P<modifier>[^}]*)\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)
_REQUIRED_REF = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*(?::?\?[^}]*)?\}$")


# --------------------------------------------------------------------------------------------
# helpers


def load_compose(path: Path = COMPOSE_FILE) -> dict:
    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    assert isinstance(data, dict) and isinstance(data.get("services"), dict), (
        f"{path} has no services mapping"
    )
    return data


def _services(compose: dict) -> dict:
    return compose.get("services") or {}


def _environment(service: dict) -> dict:
    """The environment of a service as a dict (both mapping and list syntax)."""
    env = service.get("environment") or {}
    if isinstance(env, dict):
        return {str(k): ("" if v is None else str(v)) for k, v in env.items()}
    result = {}
    for item in env:
        key, _, value = str(item).partition("=")
        result[key] = value
    return result


def _command_text(service: dict) -> str:
    parts = []
    for key in ("entrypoint", "command"):
        value = service.get(key)
        if value is None:
            continue
        parts.extend([value] if isinstance(value, str) else [str(v) for v in value])
    return " ".join(parts)


def _runs_ray(name: str, service: dict) -> bool:
    if name in RAY_SERVICES:
        return True
    return re.search(r"(^|[\s;&|(])ray\s", _command_text(service)) is not None


def _parse_short_port(spec: str) -> tuple[str | None, str | None, str]:
    """'[IP:][HOST:]CONTAINER[/proto]' -> (host_ip, published, target)."""
    spec = spec.split("/", 1)[0]
    host_ip = None
    if spec.startswith("["):  # IPv6: [::1]:8080:80
        end = spec.index("]")
        host_ip, spec = spec[1:end], spec[end + 2 :]
        parts = spec.split(":")
        return host_ip, parts[0] if len(parts) > 1 else None, parts[-1]
    parts = spec.split(":")
    if len(parts) == 3:
        return parts[0], parts[1], parts[2]
    if len(parts) == 2:
        return None, parts[0], parts[1]
    return None, None, parts[0]


def _port_entries(service: dict):
    """Yield (description, host_ip, target_port) for each `ports:` entry."""
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            yield repr(entry), entry.get("host_ip"), str(entry.get("target", ""))
        else:
            host_ip, _published, target = _parse_short_port(str(entry))
            yield repr(entry), host_ip, target


def _target_ports(target: str) -> set[int]:
    if "-" in target:
        low, high = target.split("-", 1)
        return set(range(int(low), int(high) + 1))
    return {int(target)} if target.isdigit() else set()


def interpolated_variables(text: str) -> dict[str, str]:
    """Variables referenced with compose interpolation -> their modifier (':?msg', ':-x', '')."""
    found = {}
    for match in _INTERPOLATION.finditer(text):
        if match.group("escaped"):
            continue
        name = match.group("braced") or match.group("bare")
        found.setdefault(name, match.group("modifier") or "")
    return found


def _strings(node):
    """Every string value in a parsed YAML document (comments are gone, keys are not values)."""
    if isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)
    elif isinstance(node, str):
        yield node


def parse_env_file(text: str) -> dict[str, str]:
    result = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        result[key.strip().removeprefix("export ").strip()] = value.strip()
    return result


# --------------------------------------------------------------------------------------------
# checks: each returns a list of problems (empty = fine)


def port_problems(compose: dict) -> list[str]:
    problems = []
    for name, service in _services(compose).items():
        if service.get("network_mode") == "host":
            problems.append(f"{name}: network_mode: host publishes every port on all interfaces")
        for desc, host_ip, target in _port_entries(service):
            if host_ip not in ALLOWED_HOST_IPS:
                problems.append(f"{name}: port {desc} is not bound to 127.0.0.1")
            if _target_ports(target) & NEVER_PUBLISHED:
                problems.append(f"{name}: port {desc} publishes a port that must stay internal")
    return problems


def ray_auth_problems(compose: dict) -> list[str]:
    problems = []
    services = _services(compose)
    for name in RAY_SERVICES - services.keys():
        problems.append(f"service {name} is missing")
    for name, service in services.items():
        if not _runs_ray(name, service):
            continue
        env = _environment(service)
        if env.get("RAY_AUTH_MODE") != "token":
            problems.append(f"{name}: RAY_AUTH_MODE is {env.get('RAY_AUTH_MODE')!r}, not 'token'")
        token = env.get("RAY_AUTH_TOKEN", "")
        if not re.fullmatch(r"\$\{[A-Za-z_][A-Za-z0-9_]*:\?[^}]*\}", token):
            problems.append(f"{name}: RAY_AUTH_TOKEN must be a required ${{VAR:?...}} reference")
    return problems


def secret_problems(compose: dict) -> list[str]:
    problems = []
    for name, service in _services(compose).items():
        for key, value in _environment(service).items():
            if not any(marker in key.upper() for marker in SECRET_MARKERS):
                continue
            if not _REQUIRED_REF.fullmatch(value.strip()):
                problems.append(
                    f"{name}: {key} must be ${{VAR}} or ${{VAR:?msg}} without a default, "
                    f"got {value!r}"
                )
    return problems


def mlflow_problems(compose: dict) -> list[str]:
    service = _services(compose).get("mlflow")
    if service is None:
        return ["service mlflow is missing"]
    text = _command_text(service).replace('"', "").replace("'", "")
    problems = []
    if "mlflow server" not in text:
        problems.append("mlflow: command does not run `mlflow server`")
    if "--serve-artifacts" not in text:
        problems.append("mlflow: --serve-artifacts missing")
    if not re.search(r"--artifacts-destination[ =]s3://", text):
        problems.append("mlflow: --artifacts-destination s3://... missing")
    if not re.search(r"--backend-store-uri[ =]postgresql://", text):
        problems.append("mlflow: --backend-store-uri postgresql://... missing")
    hosts = re.search(r"--allowed-hosts[ =](\S+)", text)
    if hosts is None:
        problems.append("mlflow: --allowed-hosts missing")
    elif not {"mlflow", "mlflow:5000"} & set(hosts.group(1).split(",")):
        problems.append(f"mlflow: --allowed-hosts {hosts.group(1)} does not allow `mlflow`")
    if not re.search(r"--app-name[ =]basic-auth", text):
        problems.append("mlflow: basic-auth (--app-name basic-auth) is not enabled")
    if not service.get("healthcheck"):
        problems.append("mlflow: no healthcheck")
    return problems


def depends_on_problems(compose: dict) -> list[str]:
    problems = []
    services = _services(compose)
    for name, service in services.items():
        deps = service.get("depends_on")
        if deps is None:
            continue
        if not isinstance(deps, dict):
            problems.append(f"{name}: depends_on must use the long syntax with condition:")
            continue
        for dep, spec in deps.items():
            condition = (spec or {}).get("condition")
            if condition is None:
                problems.append(f"{name}: depends_on {dep} has no condition")
            if dep not in services:
                problems.append(f"{name}: depends on unknown service {dep}")
                continue
            if condition == "service_healthy":
                check = services[dep].get("healthcheck") or {}
                if not check.get("test") or check.get("disable"):
                    problems.append(f"{name}: waits for {dep} to be healthy, but it has no check")
    return problems


def worker_problems(compose: dict) -> list[str]:
    worker = _services(compose).get("ray-worker")
    if worker is None:
        return ["service ray-worker is missing"]
    problems = []
    if "container_name" in worker:
        problems.append("ray-worker: container_name prevents --scale")
    if worker.get("ports"):
        problems.append("ray-worker: published ports prevent --scale")
    devices = (
        ((worker.get("deploy") or {}).get("resources") or {}).get("reservations") or {}
    ).get("devices") or []
    if not any(
        "gpu" in (dev.get("capabilities") or []) and dev.get("driver") == "nvidia"
        for dev in devices
    ):
        problems.append("ray-worker: no nvidia GPU device reservation")
    return problems


def env_example_problems(compose: dict, env_text: str) -> list[str]:
    used = {}
    for text in _strings(compose):
        for var, modifier in interpolated_variables(text).items():
            used.setdefault(var, modifier)
    defined = parse_env_file(env_text)
    problems = [f".env.example does not define {var}" for var in sorted(used) if var not in defined]
    problems += [
        f".env.example defines {var}, which docker-compose.yml does not use"
        for var in sorted(defined)
        if var not in used
    ]
    return problems


# --------------------------------------------------------------------------------------------
# tests of the real files


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_compose()


def test_ports_bound_to_localhost_only(compose):
    assert port_problems(compose) == []


def test_expected_ports_published(compose):
    published = {
        (name, target)
        for name, service in _services(compose).items()
        for _desc, _ip, target in _port_entries(service)
    }
    assert published == {("mlflow", "5000"), ("ray-head", "8265"), ("minio", "9001")}


def test_ray_token_auth_everywhere(compose):
    assert ray_auth_problems(compose) == []


def test_no_literal_secrets(compose):
    assert secret_problems(compose) == []


def test_mlflow_server_command(compose):
    assert mlflow_problems(compose) == []


def test_depends_on_conditions_and_healthchecks(compose):
    assert depends_on_problems(compose) == []


def test_ray_worker_scalable_with_gpu(compose):
    assert worker_problems(compose) == []


def test_hps_cli_service(compose):
    hps = compose["services"]["hps"]
    assert hps.get("profiles") == ["cli"], "hps must not start with `docker compose up`"
    assert "exec hps" in _command_text(hps)
    env = _environment(hps)
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert env["RAY_ADDRESS"] == "ray-head:6379"


def test_env_example_covers_compose_variables():
    problems = env_example_problems(load_compose(), ENV_EXAMPLE.read_text(encoding="utf-8"))
    assert problems == []


def test_env_example_has_only_placeholder_secrets():
    env = parse_env_file(ENV_EXAMPLE.read_text(encoding="utf-8"))
    for key, value in env.items():
        if any(marker in key for marker in SECRET_MARKERS):
            assert value.startswith("change-me"), f"{key} in .env.example is not a placeholder"


def test_image_runs_as_non_root_and_ignores_secrets():
    users = re.findall(r"^USER\s+(\S+)", DOCKERFILE.read_text(encoding="utf-8"), re.MULTILINE)
    assert users and users[-1] not in {"root", "0"}
    ignored = set(DOCKERIGNORE.read_text(encoding="utf-8").split())
    assert {".env", ".venv", ".git", "mlruns.db", "hps-runs"} <= ignored


# --------------------------------------------------------------------------------------------
# negative tests: the checks reject broken variants


def test_rejects_port_on_all_interfaces(compose):
    broken = copy.deepcopy(compose)
    broken["services"]["mlflow"]["ports"] = ["0.0.0.0:5000:5000"]
    assert port_problems(broken)
    broken["services"]["mlflow"]["ports"] = ["5000:5000"]
    assert port_problems(broken)
    broken["services"]["mlflow"]["ports"] = [{"target": 5000, "published": 5000}]
    assert port_problems(broken)
    broken["services"]["mlflow"]["ports"] = [
        {"target": 5000, "published": 5000, "host_ip": "127.0.0.1"}
    ]
    assert port_problems(broken) == []
    broken["services"]["postgres"]["ports"] = ["127.0.0.1:5432:5432"]
    assert port_problems(broken) == [
        "postgres: port '127.0.0.1:5432:5432' publishes a port that must stay internal"
    ]


def test_rejects_secret_defaults_and_literals(compose):
    broken = copy.deepcopy(compose)
    env = broken["services"]["postgres"]["environment"]
    env["POSTGRES_PASSWORD"] = "${POSTGRES_PASSWORD:-hunter2}"
    assert secret_problems(broken)
    env["POSTGRES_PASSWORD"] = "hunter2"
    assert secret_problems(broken)
    broken = copy.deepcopy(compose)
    broken["services"]["minio"]["environment"] = ["MINIO_ROOT_PASSWORD=hunter2"]
    assert secret_problems(broken)


def test_rejects_missing_ray_auth(compose):
    broken = copy.deepcopy(compose)
    del broken["services"]["ray-worker"]["environment"]["RAY_AUTH_MODE"]
    assert ray_auth_problems(broken)
    broken = copy.deepcopy(compose)
    broken["services"]["hps"]["environment"]["RAY_AUTH_TOKEN"] = "${RAY_AUTH_TOKEN:-}"
    assert ray_auth_problems(broken)
    broken = copy.deepcopy(compose)
    broken["services"]["extra-ray"] = {"image": "x", "command": ["ray", "start", "--head"]}
    assert ray_auth_problems(broken) == [
        "extra-ray: RAY_AUTH_MODE is None, not 'token'",
        "extra-ray: RAY_AUTH_TOKEN must be a required ${VAR:?...} reference",
    ]


def test_rejects_bad_depends_on_worker_and_mlflow(compose):
    broken = copy.deepcopy(compose)
    broken["services"]["mlflow"]["depends_on"] = ["postgres"]
    del broken["services"]["ray-head"]["healthcheck"]
    # list syntax; ray-worker and hps wait for a ray-head without healthcheck
    assert len(depends_on_problems(broken)) == 3
    broken["services"]["ray-worker"]["container_name"] = "worker"
    del broken["services"]["ray-worker"]["deploy"]
    assert len(worker_problems(broken)) == 2
    command = broken["services"]["mlflow"]["command"]
    broken["services"]["mlflow"]["command"] = [command[0].replace("--allowed-hosts", "--no-hosts")]
    assert mlflow_problems(broken) == ["mlflow: --allowed-hosts missing"]


def test_rejects_undocumented_variable(compose):
    broken = copy.deepcopy(compose)
    broken["services"]["postgres"]["command"] = ["postgres", "x=${NEW_SECRET:?x}", "$$NOT_A_VAR"]
    assert env_example_problems(broken, ENV_EXAMPLE.read_text(encoding="utf-8")) == [
        ".env.example does not define NEW_SECRET"
    ]


# --------------------------------------------------------------------------------------------
# validation with a real compose parser


def _compose_command() -> list[str] | None:
    exe = shutil.which("docker-compose")
    if exe:
        return [exe]
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=60)
        if probe.returncode == 0:
            return [docker, "compose"]
    return None


@pytest.fixture(scope="module")
def compose_cmd() -> list[str]:
    cmd = _compose_command()
    if cmd is None:
        reason = (
            "no compose parser: neither `docker-compose` nor `docker compose` is installed "
            "(apt-get install -y --no-install-recommends docker-compose)"
        )
        if os.environ.get("CI"):
            pytest.fail(reason + "; CI must install it")
        pytest.skip(reason)
    return cmd


def _run_compose_config(cmd: list[str], env_file: Path) -> subprocess.CompletedProcess:
    # A clean environment: variables come from the env file only, not from the caller's shell.
    env = {k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG", "LC_ALL", "TMPDIR"}}
    return subprocess.run(
        [*cmd, "--env-file", str(env_file), "-f", str(COMPOSE_FILE), "--profile", "cli"]
        + ["config", "-q"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_compose_parser_accepts_file(compose_cmd):
    result = _run_compose_config(compose_cmd, ENV_EXAMPLE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_parser_requires_secrets(compose_cmd, tmp_path):
    env_file = tmp_path / "missing-token.env"
    lines = ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
    env_file.write_text("\n".join(l for l in lines if not l.startswith("RAY_AUTH_TOKEN=")) + "\n")
    result = _run_compose_config(compose_cmd, env_file)
    assert result.returncode != 0
    assert "RAY_AUTH_TOKEN" in result.stdout + result.stderr
