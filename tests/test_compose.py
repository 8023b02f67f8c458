"""Checks of the deployment files: docker-compose.yml, .env.example, Dockerfile, .dockerignore, docker/.

No Docker engine is needed (none exists on the development and CI machines, so no container is ever
started here). The security properties are checked on the YAML parsed with PyYAML (anchors and `<<`
merge keys resolved); each check is a function that takes the parsed dict and returns a list of
problems, so the negative tests can feed it a mutated copy. A real compose parser (`docker-compose`
1.29 from Debian's package, or `docker compose` v2) validates the file with a filled-in `.env` and
refuses the unfilled example; `config` does not talk to an engine. The scripts under docker/ run for
real: the secrets check with `sh`, the mlflow entrypoint with a stand-in `mlflow` that records what it
was given, and the MLflow user setup against a real `mlflow server --app-name basic-auth`.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import os
import re
import secrets
import shlex
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import requests
import yaml

from tests.conftest import free_port, server_env, stop_process_group, wait_for_health

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
CHECK_SECRETS = ROOT / "docker" / "check-secrets.sh"
MLFLOW_SERVER_SH = ROOT / "docker" / "mlflow-server.sh"
MLFLOW_INIT = ROOT / "docker" / "mlflow-init.py"

ALLOWED_HOST_IPS = {"127.0.0.1"}
RAY_SERVICES = {"ray-head", "ray-worker", "hps"}
SECRET_MARKERS = ("PASSWORD", "SECRET", "TOKEN", "ACCESS_KEY")
# Container ports that must never be published: PostgreSQL, Ray GCS.
NEVER_PUBLISHED = {5432, 6379}
# Only these services may see the MLflow admin's password.
ADMIN_SERVICES = {"mlflow", "mlflow-init"}
CHECKER = "hps-check-secrets"
# name:tag@sha256:<64 hex>
PINNED_IMAGE = re.compile(r"^[a-z0-9][a-z0-9._/-]*:[A-Za-z0-9._-]+@sha256:[0-9a-f]{64}$")

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


def _is_secret_name(name: str) -> bool:
    return any(marker in name.upper() for marker in SECRET_MARKERS)


def mlflow_problems(compose: dict, server_script: str | None = None) -> list[str]:
    service = _services(compose).get("mlflow")
    if service is None:
        return ["service mlflow is missing"]
    if server_script is None:
        server_script = MLFLOW_SERVER_SH.read_text(encoding="utf-8")
    problems = []
    if service.get("entrypoint") != ["hps-mlflow-server"]:
        problems.append("mlflow: entrypoint must be hps-mlflow-server (docker/mlflow-server.sh)")
    if not re.search(r'^exec mlflow server "\$@"$', server_script, re.MULTILINE):
        problems.append('mlflow: docker/mlflow-server.sh does not exec `mlflow server "$@"`')
    if not re.search(r"^export MLFLOW_BACKEND_STORE_URI=", server_script, re.MULTILINE):
        problems.append("mlflow: docker/mlflow-server.sh does not pass the URI as MLFLOW_BACKEND_STORE_URI")
    args = service.get("command") or []
    args = shlex.split(args) if isinstance(args, str) else [str(a) for a in args]
    text = " ".join(args)
    if "--serve-artifacts" not in args:
        problems.append("mlflow: --serve-artifacts missing")
    if "--artifacts-destination" not in args:
        problems.append("mlflow: --artifacts-destination missing")
    if "--backend-store-uri" in text:
        problems.append("mlflow: --backend-store-uri on the command line (the URI holds the password)")
    if "--allowed-hosts" not in args:
        problems.append("mlflow: --allowed-hosts missing")
    else:
        hosts = args[args.index("--allowed-hosts") + 1].split(",")
        if not {"mlflow", "mlflow:5000"} & set(hosts):
            problems.append(f"mlflow: --allowed-hosts {hosts} does not allow `mlflow`")
    if "--app-name basic-auth" not in text:
        problems.append("mlflow: basic-auth (--app-name basic-auth) is not enabled")
    if not service.get("healthcheck"):
        problems.append("mlflow: no healthcheck")
    return problems


def command_secret_problems(compose: dict) -> list[str]:
    """No secret on a command line: no entrypoint/command refers to a secret variable (compose
    interpolation `${X}` or shell expansion `$${X}`) or holds credentials in a URI."""
    problems = []
    for name, service in _services(compose).items():
        for key in ("entrypoint", "command"):
            value = service.get(key)
            if value is None:
                continue
            parts = [value] if isinstance(value, str) else [str(v) for v in value]
            for part in parts:
                refs = set(re.findall(r"\$\$?\{?([A-Za-z_][A-Za-z0-9_]*)", part))
                for ref in sorted(r for r in refs if _is_secret_name(r)):
                    problems.append(f"{name}: {key} refers to the secret {ref} (visible to `ps`)")
                if re.search(r"://[^/\s:@]+:[^@\s]+@", part):
                    problems.append(f"{name}: {key} holds credentials in a URI")
    return problems


def _checked_secrets(service: dict, server_script: str) -> set[str]:
    """Variables the service's entrypoint checks with hps-check-secrets before starting."""
    entrypoint = service.get("entrypoint") or []
    if isinstance(entrypoint, str):
        entrypoint = shlex.split(entrypoint)
    if entrypoint == ["hps-mlflow-server"]:
        line = re.search(rf"^{CHECKER} (.+)$", server_script, re.MULTILINE)
        return set(line.group(1).split()) if line else set()
    for i, arg in enumerate(entrypoint):
        if arg == CHECKER or arg.endswith("/" + CHECKER):
            rest = entrypoint[i + 1 :]
            return set(rest[: rest.index("--")] if "--" in rest else rest)
    return set()


def secrets_checked_problems(compose: dict, server_script: str | None = None) -> list[str]:
    """Every service that holds a secret starts through hps-check-secrets, which checks all of them."""
    if server_script is None:
        server_script = MLFLOW_SERVER_SH.read_text(encoding="utf-8")
    problems = []
    for name, service in _services(compose).items():
        held = {key for key in _environment(service) if _is_secret_name(key)}
        missing = held - _checked_secrets(service, server_script)
        if missing:
            problems.append(f"{name}: secrets not checked at start: {sorted(missing)}")
        entrypoint = service.get("entrypoint") or []
        if held and "build" not in service and not any(
            str(v).split(":", 1)[0] == "./docker/check-secrets.sh" for v in service.get("volumes") or []
        ):
            problems.append(f"{name}: upstream image without ./docker/check-secrets.sh mounted")
        if held and entrypoint and entrypoint[-1] == "--" and not service.get("command"):
            problems.append(f"{name}: hps-check-secrets has nothing to exec")
    return problems


def mlflow_credential_problems(compose: dict) -> list[str]:
    """Least privilege: the admin's password only where users are managed, the hps user everywhere
    else, no MLflow credentials at all on the Ray workers."""
    problems = []
    for name, service in _services(compose).items():
        env = _environment(service)
        refs = {var for value in env.values() for var in interpolated_variables(value)}
        if "MLFLOW_ADMIN_PASSWORD" in refs and name not in ADMIN_SERVICES:
            problems.append(f"{name}: gets the MLflow admin password")
        if name == "ray-worker" and any(key.startswith("MLFLOW_") for key in env):
            problems.append("ray-worker: has MLflow settings; trials never talk to MLflow")
        if name not in ADMIN_SERVICES and "MLFLOW_TRACKING_PASSWORD" in env:
            if interpolated_variables(env["MLFLOW_TRACKING_PASSWORD"]).keys() != {"MLFLOW_HPS_PASSWORD"}:
                problems.append(f"{name}: MLFLOW_TRACKING_PASSWORD is not the hps user's")
            if interpolated_variables(env.get("MLFLOW_TRACKING_USERNAME", "")).keys() != {"MLFLOW_HPS_USERNAME"}:
                problems.append(f"{name}: MLFLOW_TRACKING_USERNAME is not the hps user")
    return problems


def image_pin_problems(compose: dict) -> list[str]:
    """Every image that is pulled is pinned by tag and digest; built ones are checked in the Dockerfile."""
    problems = []
    for name, service in _services(compose).items():
        if "build" in service:
            continue
        image = str(service.get("image", ""))
        if not PINNED_IMAGE.fullmatch(image):
            problems.append(f"{name}: image {image!r} is not pinned as name:tag@sha256:<digest>")
    return problems


def _dockerfile_instructions(text: str) -> list[str]:
    """Instructions with comments dropped and backslash continuations joined."""
    lines, current = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        lines.append(current + line)
        current = ""
    return lines


def _resolve_args(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: args.get(m.group(1), m.group(0)), text)


def dockerfile_problems(text: str) -> list[str]:
    """Base images pinned by tag and digest, no unpinned `# syntax=` frontend, every package that a
    `pip install` names pinned with ==."""
    problems = []
    syntax = re.search(r"^#\s*syntax\s*=\s*(\S+)", text, re.MULTILINE)
    if syntax and not PINNED_IMAGE.fullmatch(syntax.group(1)):
        problems.append(f"# syntax={syntax.group(1)} pulls an unpinned frontend image")
    args: dict[str, str] = {}
    stages: set[str] = set()
    for instruction in _dockerfile_instructions(text):
        keyword, _, rest = instruction.partition(" ")
        keyword = keyword.upper()
        if keyword == "ARG" and "=" in rest:
            key, _, value = rest.strip().partition("=")
            args[key] = value.strip().strip('"')
        elif keyword == "FROM":
            words = [w for w in rest.split() if not w.startswith("--")]
            image = _resolve_args(words[0], args)
            if image not in stages and not PINNED_IMAGE.fullmatch(image):
                problems.append(f"FROM {words[0]} ({image}) is not pinned as name:tag@sha256:<digest>")
            if len(words) >= 3 and words[1].upper() == "AS":
                stages.add(words[2])
        elif keyword == "RUN" and "pip install" in rest:
            for command in re.split(r"&&|;", rest):
                tokens = shlex.split(_resolve_args(command, args))
                if "install" not in tokens or not any(t.endswith("pip") for t in tokens[: tokens.index("install")]):
                    continue
                skip_next = False
                for token in tokens[tokens.index("install") + 1 :]:
                    if skip_next:
                        skip_next = False
                    elif token in {"-i", "--index-url", "--extra-index-url", "-c", "-r", "--target", "-t"}:
                        skip_next = True
                    elif token.startswith("-") or token.startswith(("/", ".")):
                        continue
                    elif not re.fullmatch(r"[A-Za-z0-9._-]+(\[[A-Za-z0-9,._-]+\])?==[A-Za-z0-9.+!-]+", token):
                        problems.append(f"pip package {token!r} is not pinned with ==")
    return problems


def _dockerfile_pins(text: str) -> dict[str, str]:
    """Normalized package name -> pinned version, over every `pip install` of the Dockerfile."""
    args = {}
    pins = {}
    for instruction in _dockerfile_instructions(text):
        keyword, _, rest = instruction.partition(" ")
        if keyword.upper() == "ARG" and "=" in rest:
            key, _, value = rest.strip().partition("=")
            args[key] = value
        for name, version in re.findall(r"([A-Za-z0-9._-]+)(?:\[[^\]]*\])?==([A-Za-z0-9.+!-]+)",
                                        _resolve_args(instruction, args)):
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


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
    assert published == {("mlflow", "5000"), ("ray-head", "8265")}


def test_ray_token_auth_everywhere(compose):
    assert ray_auth_problems(compose) == []


def test_no_literal_secrets(compose):
    assert secret_problems(compose) == []


def test_no_secret_on_any_command_line(compose):
    assert command_secret_problems(compose) == []


def test_every_secret_is_checked_at_start(compose):
    assert secrets_checked_problems(compose) == []


def test_least_privilege_mlflow_credentials(compose):
    assert mlflow_credential_problems(compose) == []
    worker = _environment(compose["services"]["ray-worker"])
    assert not [key for key in worker if key.startswith("MLFLOW_")]


def test_mlflow_server_command(compose):
    assert mlflow_problems(compose) == []


def test_no_object_store_artifacts_on_a_volume(compose):
    """MinIO's images are gone from Docker Hub; on one host MLflow keeps artifacts on a volume."""
    services = compose["services"]
    assert not [name for name in services if "minio" in name]
    assert not [name for name, s in services.items() if "minio" in str(s.get("image", ""))]
    mlflow = services["mlflow"]
    args = mlflow["command"]
    destination = args[args.index("--artifacts-destination") + 1]
    assert any(str(v).split(":")[1] == destination for v in mlflow["volumes"])


def test_depends_on_conditions_and_healthchecks(compose):
    assert depends_on_problems(compose) == []
    # whatever logs to MLflow as the hps user waits for mlflow-init to have created it
    for name in ("ray-head", "hps"):
        assert compose["services"][name]["depends_on"]["mlflow-init"] == {
            "condition": "service_completed_successfully"}


def test_ray_worker_scalable_with_gpu(compose):
    assert worker_problems(compose) == []


def test_images_pinned_by_digest(compose):
    assert image_pin_problems(compose) == []
    assert dockerfile_problems(DOCKERFILE.read_text(encoding="utf-8")) == []


def test_dockerfile_pins_every_project_dependency():
    pins = _dockerfile_pins(DOCKERFILE.read_text(encoding="utf-8"))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    for requirement in project["dependencies"]:
        name = re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", requirement).group(0)).lower()
        assert name in pins, f"{name} (pyproject.toml) is not pinned in the Dockerfile"
        exact = re.search(r"==([A-Za-z0-9.+!-]+)", requirement)
        if exact:
            assert pins[name] == exact.group(1), f"{name}: Dockerfile {pins[name]} != pyproject {exact.group(1)}"


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


def test_env_example_ships_every_secret_empty():
    env = parse_env_file(ENV_EXAMPLE.read_text(encoding="utf-8"))
    secret_keys = [key for key in env if _is_secret_name(key)]
    assert set(secret_keys) == {"POSTGRES_PASSWORD", "MLFLOW_ADMIN_PASSWORD", "MLFLOW_HPS_PASSWORD",
                                "MLFLOW_FLASK_SERVER_SECRET_KEY", "RAY_AUTH_TOKEN"}
    assert {key: env[key] for key in secret_keys} == dict.fromkeys(secret_keys, "")


def test_image_runs_as_non_root_and_ignores_secrets():
    users = re.findall(r"^USER\s+(\S+)", DOCKERFILE.read_text(encoding="utf-8"), re.MULTILINE)
    assert len(users) == 2 and not {"root", "0"} & set(users)
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
    broken["services"]["postgres"]["environment"] = ["POSTGRES_PASSWORD=hunter2"]
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


def test_rejects_password_on_a_command_line(compose):
    broken = copy.deepcopy(compose)
    # the old mlflow command: the shell expands the password into mlflow's argv
    broken["services"]["mlflow"]["command"] = [
        'exec mlflow server --backend-store-uri "postgresql://mlflow:$${POSTGRES_PASSWORD}@postgres:5432/mlflow"']
    assert command_secret_problems(broken) == ["mlflow: command refers to the secret POSTGRES_PASSWORD (visible to `ps`)",
                                               "mlflow: command holds credentials in a URI"]
    assert "mlflow: --backend-store-uri on the command line (the URI holds the password)" in mlflow_problems(broken)
    broken["services"]["mlflow"]["command"] = ["--backend-store-uri", "postgresql://mlflow:hunter2@postgres/mlflow"]
    assert command_secret_problems(broken) == ["mlflow: command holds credentials in a URI"]
    broken = copy.deepcopy(compose)
    broken["services"]["ray-head"]["command"] = ["ray", "start", "--head", "--token=${RAY_AUTH_TOKEN}"]
    assert command_secret_problems(broken) == ["ray-head: command refers to the secret RAY_AUTH_TOKEN (visible to `ps`)"]


def test_rejects_unchecked_secrets(compose):
    broken = copy.deepcopy(compose)
    broken["services"]["ray-worker"]["entrypoint"] = ["hps-check-secrets", "--"]
    assert secrets_checked_problems(broken) == ["ray-worker: secrets not checked at start: ['RAY_AUTH_TOKEN']"]
    broken = copy.deepcopy(compose)
    del broken["services"]["postgres"]["entrypoint"]
    assert secrets_checked_problems(broken) == ["postgres: secrets not checked at start: ['POSTGRES_PASSWORD']"]
    broken = copy.deepcopy(compose)
    broken["services"]["postgres"]["volumes"] = ["postgres-data:/var/lib/postgresql/data"]
    assert secrets_checked_problems(broken) == ["postgres: upstream image without ./docker/check-secrets.sh mounted"]
    script = MLFLOW_SERVER_SH.read_text(encoding="utf-8").replace(" MLFLOW_FLASK_SERVER_SECRET_KEY\n", "\n")
    assert secrets_checked_problems(compose, script) == [
        "mlflow: secrets not checked at start: ['MLFLOW_FLASK_SERVER_SECRET_KEY']"]


def test_rejects_admin_credentials_outside_user_management(compose):
    broken = copy.deepcopy(compose)
    env = broken["services"]["hps"]["environment"]
    env["MLFLOW_TRACKING_USERNAME"] = "${MLFLOW_ADMIN_USERNAME:?x}"
    env["MLFLOW_TRACKING_PASSWORD"] = "${MLFLOW_ADMIN_PASSWORD:?x}"
    assert mlflow_credential_problems(broken) == [
        "hps: gets the MLflow admin password",
        "hps: MLFLOW_TRACKING_PASSWORD is not the hps user's",
        "hps: MLFLOW_TRACKING_USERNAME is not the hps user",
    ]
    broken = copy.deepcopy(compose)
    broken["services"]["ray-worker"]["environment"]["MLFLOW_TRACKING_URI"] = "http://mlflow:5000"
    assert mlflow_credential_problems(broken) == ["ray-worker: has MLflow settings; trials never talk to MLflow"]


def test_rejects_unpinned_images(compose):
    broken = copy.deepcopy(compose)
    broken["services"]["postgres"]["image"] = "postgres:16"
    broken["services"]["minio"] = {"image": "minio/minio:latest"}
    broken["services"]["bare"] = {"image": "busybox@sha256:" + "0" * 64}  # a digest without a tag
    assert image_pin_problems(broken) == [
        "postgres: image 'postgres:16' is not pinned as name:tag@sha256:<digest>",
        "minio: image 'minio/minio:latest' is not pinned as name:tag@sha256:<digest>",
        "bare: image 'busybox@sha256:" + "0" * 64 + "' is not pinned as name:tag@sha256:<digest>",
    ]
    dockerfile = DOCKERFILE.read_text(encoding="utf-8")
    old = ("# syntax=docker/dockerfile:1\nARG PYTHON_VERSION=3.11\nFROM python:${PYTHON_VERSION}-slim AS base\n"
           'FROM base\nRUN pip install "mlflow[auth]==3.17.2" psycopg2-binary boto3 \\\n    "requests>=2.32" /app\n')
    assert dockerfile_problems(old) == [
        "# syntax=docker/dockerfile:1 pulls an unpinned frontend image",
        "FROM python:${PYTHON_VERSION}-slim (python:3.11-slim) is not pinned as name:tag@sha256:<digest>",
        "pip package 'psycopg2-binary' is not pinned with ==",
        "pip package 'boto3' is not pinned with ==",
        "pip package 'requests>=2.32' is not pinned with ==",
    ]
    assert dockerfile_problems(dockerfile.replace('"pyarrow==25.0.1"', '"pyarrow"')) == [
        "pip package 'pyarrow' is not pinned with =="]


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
    command[command.index("--allowed-hosts")] = "--no-hosts"
    assert mlflow_problems(broken) == ["mlflow: --allowed-hosts missing"]


def test_rejects_undocumented_variable(compose):
    broken = copy.deepcopy(compose)
    broken["services"]["postgres"]["command"] = ["postgres", "x=${NEW_SECRET:?x}", "$$NOT_A_VAR"]
    assert env_example_problems(broken, ENV_EXAMPLE.read_text(encoding="utf-8")) == [
        ".env.example does not define NEW_SECRET"
    ]


# --------------------------------------------------------------------------------------------
# docker/check-secrets.sh, run with sh


def _good_secret() -> str:
    return secrets.token_hex(32)


def run_check(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k in {"PATH", "LANG", "LC_ALL"}}
    return subprocess.run(["sh", str(CHECK_SECRETS), *args], env={**base, **env}, capture_output=True,
                          text=True, timeout=30)


def test_check_secrets_accepts_good_secrets_and_execs_the_command():
    env = {"A": _good_secret(), "B": secrets.token_urlsafe(32), "C": "Ab3.Xy_9~Qz-7Rt5w"}
    result = run_check(env, "A", "B", "C", "--", "sh", "-c", 'echo "started with $# args: $1|$2"', "x", "a b", "c")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "started with 2 args: a b|c\n" and result.stderr == ""
    assert run_check(env, "A", "B").returncode == 0  # no command: just the check


# The values the old .env.example shipped, and other made-up ones: refused, each with a clear line.
@pytest.mark.parametrize("value, reason", [
    ("change-me-ray-auth-token", "looks like a placeholder (contains 'change-me')"),
    ("change-me-postgres-password", "looks like a placeholder (contains 'change-me')"),
    ("CHANGEME0123456789abcdef", "looks like a placeholder (contains 'changeme')"),
    ("my-super-secret-token-1234", "looks like a placeholder (contains 'secret')"),
    ("Password1Password1", "looks like a placeholder (contains 'password')"),
    ("example0123456789abcdef", "looks like a placeholder (contains 'example')"),
    ("0123456789abcde", "is 15 characters long, at least 16 are required"),
    ("admin", "is 5 characters long, at least 16 are required"),
    ("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "has only 1 distinct characters, at least 5 are required"),
    ("abababababababababab", "has only 2 distinct characters, at least 5 are required"),
    ("0123456789abcdef0123@postgres", "has characters other than A-Z a-z 0-9 . _ ~ - (it must be URL-safe)"),
    ("0123456789abcdef 0123", "has characters other than A-Z a-z 0-9 . _ ~ - (it must be URL-safe)"),
    ("0123456789abcdef%0123", "has characters other than A-Z a-z 0-9 . _ ~ - (it must be URL-safe)"),
])
def test_check_secrets_refuses_placeholder_short_and_unsafe(value, reason):
    result = run_check({"RAY_AUTH_TOKEN": value}, "RAY_AUTH_TOKEN", "--", "echo", "STARTED")
    assert result.returncode == 1
    assert "STARTED" not in result.stdout
    line, = result.stderr.splitlines()
    assert line.startswith(f"hps-check-secrets: refusing to start: RAY_AUTH_TOKEN {reason}")
    assert value not in result.stderr  # never echo a secret into the logs


def test_check_secrets_refuses_empty_unset_and_reused_and_reports_all():
    token = _good_secret()
    env = {"EMPTY": "", "ADMIN": token, "HPS": token, "GOOD": _good_secret()}
    result = run_check(env, "EMPTY", "UNSET", "ADMIN", "HPS", "GOOD", "--", "echo", "STARTED")
    assert result.returncode == 1 and "STARTED" not in result.stdout
    lines = result.stderr.splitlines()
    assert [line.split(": ", 2)[2] for line in lines] == [
        "EMPTY is empty or unset; set it in .env (generate one with: python3 -c 'import secrets; print(secrets.token_hex(32))')",
        "UNSET is empty or unset; set it in .env (generate one with: python3 -c 'import secrets; print(secrets.token_hex(32))')",
        "HPS has the same value as ADMIN; every secret must be different",
    ]


def test_check_secrets_usage_errors():
    assert run_check({}).returncode == 2
    bad = run_check({}, "A;rm -rf /", "--", "true")
    assert bad.returncode == 2 and "not an environment variable name" in bad.stderr


def test_env_example_values_are_refused_by_the_services():
    """`cp .env.example .env` and the old placeholders alike: every secret a service checks is refused."""
    env = parse_env_file(ENV_EXAMPLE.read_text(encoding="utf-8"))
    keys = [key for key in env if _is_secret_name(key)]
    result = run_check({key: env[key] for key in keys}, *keys, "--", "echo", "STARTED")
    assert result.returncode == 1 and len(result.stderr.splitlines()) == len(keys)


# --------------------------------------------------------------------------------------------
# docker/mlflow-server.sh with a stand-in `mlflow` that records its argv and environment


@pytest.fixture
def fake_bin(tmp_path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / CHECKER).write_text(f'#!/bin/sh\nexec sh {shlex.quote(str(CHECK_SECRETS))} "$@"\n')
    (bin_dir / "mlflow").write_text(
        '#!/bin/sh\nprintf "%s\\n" "$@" > "$RECORD.argv"\nenv > "$RECORD.env"\n')
    for path in bin_dir.iterdir():
        path.chmod(0o755)
    return bin_dir


def _server_env(tmp_path: Path, fake_bin: Path, **overrides: str) -> dict[str, str]:
    env = {
        "PATH": f"{fake_bin}:{os.environ['PATH']}",
        "RECORD": str(tmp_path / "mlflow"),
        "POSTGRES_PASSWORD": _good_secret(),
        "POSTGRES_HOST": "postgres",
        "MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "basic_auth.ini"),
        "MLFLOW_AUTH_ADMIN_USERNAME": "admin",
        "MLFLOW_AUTH_ADMIN_PASSWORD": _good_secret(),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": _good_secret(),
        "MLFLOW_DEFAULT_PERMISSION": "READ",
    }
    env.update(overrides)
    return env


def test_mlflow_entrypoint_passes_the_database_uri_through_the_environment(tmp_path, fake_bin):
    env = _server_env(tmp_path, fake_bin)
    password = env["POSTGRES_PASSWORD"]
    args = ["--serve-artifacts", "--app-name", "basic-auth"]
    result = subprocess.run(["sh", str(MLFLOW_SERVER_SH), *args], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    argv = (tmp_path / "mlflow.argv").read_text().splitlines()
    assert argv == ["server", *args]
    assert password not in "\n".join(argv)
    server_env = dict(line.split("=", 1) for line in (tmp_path / "mlflow.env").read_text().splitlines() if "=" in line)
    uri = f"postgresql://mlflow:{password}@postgres:5432/mlflow"
    assert server_env["MLFLOW_BACKEND_STORE_URI"] == uri
    assert "POSTGRES_PASSWORD" not in server_env
    config = tmp_path / "basic_auth.ini"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    import configparser

    parsed = configparser.ConfigParser()
    parsed.read(config)
    assert dict(parsed["mlflow"]) == {
        "default_permission": "READ", "database_uri": uri,
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
        "auth_cache_ttl_seconds": "60"}


@pytest.mark.parametrize("variable", ["POSTGRES_PASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"])
def test_mlflow_entrypoint_refuses_placeholder_secrets(tmp_path, fake_bin, variable):
    env = _server_env(tmp_path, fake_bin, **{variable: "change-me-" + variable.lower()})
    result = subprocess.run(["sh", str(MLFLOW_SERVER_SH), "--serve-artifacts"], env=env, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 1
    assert result.stderr.startswith(f"hps-check-secrets: refusing to start: {variable} looks like a placeholder")
    assert not (tmp_path / "mlflow.argv").exists() and not (tmp_path / "basic_auth.ini").exists()


# --------------------------------------------------------------------------------------------
# docker/mlflow-init.py against a real `mlflow server --app-name basic-auth`


@pytest.fixture(scope="module")
def basic_auth_server(tmp_path_factory):
    """A real basic-auth MLflow server (sqlite, proxied artifacts); yields (uri, admin, admin password)."""
    pytest.importorskip("flask_wtf", reason="MLflow's basic-auth app needs Flask-WTF (pip install 'mlflow[auth]')")
    root = tmp_path_factory.mktemp("basic-auth")
    admin_password = _good_secret()
    config = root / "basic_auth.ini"
    # As docker/mlflow-server.sh writes it, with a SQLite user store instead of PostgreSQL.
    config.write_text("[mlflow]\ndefault_permission = READ\n"
                      f"database_uri = sqlite:///{root}/auth.db\n"
                      "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                      "auth_cache_ttl_seconds = 60\n")
    env = {**server_env(), "MLFLOW_AUTH_CONFIG_PATH": str(config), "MLFLOW_AUTH_ADMIN_USERNAME": "admin",
           "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password, "MLFLOW_FLASK_SERVER_SECRET_KEY": _good_secret()}
    port = free_port()
    log = open(root / "server.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth",
         "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
         "--artifacts-destination", str(root / "artifacts"), "--serve-artifacts",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, cwd=root, env=env, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(uri, process)
        yield uri, "admin", admin_password
    finally:
        stop_process_group(process)
        log.close()


def run_init(uri: str, admin: str, admin_password: str, username: str, password: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_TRACKING_USERNAME": admin,
           "MLFLOW_TRACKING_PASSWORD": admin_password, "MLFLOW_HPS_USERNAME": username,
           "MLFLOW_HPS_PASSWORD": password, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    return subprocess.run([sys.executable, str(MLFLOW_INIT)], env=env, capture_output=True, text=True, timeout=120)


@functools.cache
def _init_script():
    """docker/mlflow-init.py as a module (its imports, ~3 s of MLflow's server package, paid once)."""
    spec = importlib.util.spec_from_file_location("hps_mlflow_init", MLFLOW_INIT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def init_here(monkeypatch, capsys, uri: str, admin: str, admin_password: str, username: str,
              password: str) -> tuple[int, str, str]:
    """The script's ``main()`` in this process with the environment :func:`run_init` gives it: (exit status,
    stdout, stderr). The tests of its outcomes use this; :func:`run_init` runs it as the container does."""
    for name, value in {"MLFLOW_TRACKING_URI": uri, "MLFLOW_TRACKING_USERNAME": admin,
                        "MLFLOW_TRACKING_PASSWORD": admin_password, "MLFLOW_HPS_USERNAME": username,
                        "MLFLOW_HPS_PASSWORD": password, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}.items():
        monkeypatch.setenv(name, value)
    capsys.readouterr()
    try:
        code = _init_script().main()
    except SystemExit as exc:  # the script's one-line refusals
        print(exc.code, file=sys.stderr)
        code = 1
    said = capsys.readouterr()
    return code, said.out, said.err


@pytest.mark.slow
def test_mlflow_init_creates_a_non_admin_user_that_can_do_what_hps_does(basic_auth_server, tmp_path, monkeypatch):
    uri, admin, admin_password = basic_auth_server
    password = _good_secret()
    result = run_init(uri, admin, admin_password, "hps", password)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hps-mlflow-init: MLflow user 'hps' created; it is not an admin\n"

    me = requests.get(f"{uri}/api/2.0/mlflow/users/current", auth=("hps", password), timeout=30).json()
    assert me["user"]["is_admin"] is False

    # What hps does as this user: experiment, parent and child runs, metrics/params/tags, proxied
    # artifacts, deleting a run, a logged model registered with an alias and a version tag, reading back.
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.server.auth.client import AuthServiceClient
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "hps")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    client = MlflowClient(uri)
    exp_id = client.create_experiment("hps-as-non-admin")
    parent = client.create_run(exp_id, tags={"hps.search": "s"})
    child = client.create_run(exp_id, tags={"mlflow.parentRunId": parent.info.run_id})
    client.log_param(child.info.run_id, "lr", "0.01")
    client.log_metric(child.info.run_id, "val_loss", 0.5, step=1)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "weights.txt").write_text("w")
    client.log_artifacts(child.info.run_id, str(model_dir), "model")
    client.set_terminated(child.info.run_id)
    doomed = client.create_run(exp_id)
    client.delete_run(doomed.info.run_id)
    assert [a.path for a in client.list_artifacts(child.info.run_id, "model")] == ["model/weights.txt"]
    assert len(client.search_runs([exp_id])) == 2

    class Constant(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input):
            return model_input

    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_id=parent.info.run_id):
        # Requirements given, as hps gives them (inferring them would load the model in a subprocess: ~20 s).
        info = mlflow.pyfunc.log_model(name="evaluated", python_model=Constant(), pip_requirements=["pandas"])
    version = mlflow.register_model(info.model_uri, "hps-as-non-admin-model")
    client.set_registered_model_alias("hps-as-non-admin-model", "champion", version.version)
    client.set_model_version_tag("hps-as-non-admin-model", version.version, "hps.search", "s")
    assert client.get_model_version_by_alias("hps-as-non-admin-model", "champion").version == version.version

    # ... and nothing an admin can do
    with pytest.raises(MlflowException, match="403|PERMISSION_DENIED"):
        AuthServiceClient(uri).create_user("intruder", _good_secret())


@pytest.mark.slow
def test_hps_runs_evaluates_and_predicts_as_the_non_admin_user(basic_auth_server, ray_session, tmp_path, monkeypatch,
                                                               capsys):
    """The whole CLI path the compose stack's `hps` service takes, logged in as the user mlflow-init
    creates: a search (joining a running Ray, as the service joins the stack's head), evaluate (registers the
    model) and predict from the registry."""
    from sklearn.datasets import load_breast_cancer

    from search.cli import main as hps_main

    uri, admin, admin_password = basic_auth_server
    password = _good_secret()
    assert init_here(monkeypatch, capsys, uri, admin, admin_password, "hps-cli", password)[0] == 0
    # The commands run in this process (search.cli.main: the CLI's own code, without ~3 s of imports each), logged
    # in through the environment as the service is.
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "hps-cli")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    monkeypatch.chdir(tmp_path)

    def hps(*args: str) -> tuple[int, str]:
        code = hps_main([*args, "--tracking-uri", uri])
        return code, capsys.readouterr().err[-3000:]

    config = str(ROOT / "configs" / "breast_cancer.yaml")
    code, said = hps("run", config, "--name", "bc-non-admin", "--num-samples", "2", "--max-epochs", "2",
                     "--storage", str(tmp_path / "runs"), "--set", "scheduler.grace_period=1",
                     "--address", ray_session.get_runtime_context().gcs_address,
                     "--set", "space.units.high=16", "--set", "search.max_concurrent=1",
                     "--set", "tracking.review_plots=false")  # drawn by tests/test_cli.py's search; ~2 s here
    assert code == 0, said
    code, said = hps("evaluate", "bc-non-admin")
    assert code == 0, said
    rows = tmp_path / "rows.csv"
    load_breast_cancer(as_frame=True).data.head(7).to_csv(rows, index=False)
    code, said = hps("predict", "models:/bc-non-admin@champion", str(rows), "-o", str(tmp_path / "out.csv"))
    assert code == 0, said
    assert len((tmp_path / "out.csv").read_text().splitlines()) == 8


@pytest.mark.slow
def test_mlflow_init_is_idempotent_resets_the_password_and_demotes_an_admin(basic_auth_server, monkeypatch, capsys):
    uri, admin, admin_password = basic_auth_server
    first, second = _good_secret(), _good_secret()
    assert init_here(monkeypatch, capsys, uri, admin, admin_password, "hps-reset", first)[0] == 0
    # someone made the user an admin; .env now holds a new password
    from mlflow.server.auth.client import AuthServiceClient

    AuthServiceClient(uri).update_user_admin("hps-reset", True)  # as the admin (the environment init_here set)
    code, out, err = init_here(monkeypatch, capsys, uri, admin, admin_password, "hps-reset", second)
    assert code == 0, err
    assert "updated (password reset, admin rights removed)" in out
    current = f"{uri}/api/2.0/mlflow/users/current"
    assert requests.get(current, auth=("hps-reset", first), timeout=30).status_code == 401
    me = requests.get(current, auth=("hps-reset", second), timeout=30).json()
    assert me["user"]["is_admin"] is False


@pytest.mark.slow
def test_mlflow_init_fails_clearly_on_a_wrong_admin_password_or_the_admin_as_hps(basic_auth_server, monkeypatch,
                                                                                   capsys):
    uri, admin, admin_password = basic_auth_server
    code, _, err = init_here(monkeypatch, capsys, uri, admin, _good_secret(), "hps-other", _good_secret())
    assert code == 1
    assert err.startswith("hps-mlflow-init: the server refused the admin credentials")
    code, _, err = init_here(monkeypatch, capsys, uri, admin, admin_password, admin, _good_secret())
    assert code == 1
    assert "MLFLOW_HPS_USERNAME must not be the admin user 'admin'" in err


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


def filled_env_text(skip: str | None = None) -> str:
    """.env.example with every empty value filled with a fresh good secret (but `skip`)."""
    lines = []
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#") and value == "" and key != skip:
            line = f"{key}={_good_secret()}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def test_compose_parser_accepts_a_filled_env(compose_cmd, tmp_path):
    env_file = tmp_path / "filled.env"
    env_file.write_text(filled_env_text())
    result = _run_compose_config(compose_cmd, env_file)
    assert result.returncode == 0, result.stdout + result.stderr
    # and the values pass the services' own check
    env = parse_env_file(env_file.read_text())
    keys = [key for key in env if _is_secret_name(key)]
    assert run_check({key: env[key] for key in keys}, *keys).returncode == 0


def test_compose_parser_refuses_the_unfilled_example(compose_cmd):
    result = _run_compose_config(compose_cmd, ENV_EXAMPLE)
    assert result.returncode != 0
    assert re.search(r"set [A-Z_]+ in \.env", result.stdout + result.stderr)


@pytest.mark.parametrize("secret", ["POSTGRES_PASSWORD", "MLFLOW_ADMIN_PASSWORD", "MLFLOW_HPS_PASSWORD",
                                    "MLFLOW_FLASK_SERVER_SECRET_KEY", "RAY_AUTH_TOKEN"])
def test_compose_parser_names_each_missing_secret(compose_cmd, tmp_path, secret):
    env_file = tmp_path / "one-missing.env"
    env_file.write_text(filled_env_text(skip=secret))
    result = _run_compose_config(compose_cmd, env_file)
    assert result.returncode != 0
    assert f"set {secret} in .env" in result.stdout + result.stderr
