"""Shared fixtures: one real local Ray and one real `mlflow server` process per test session."""

from __future__ import annotations

import copy
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml
from hypothesis import settings

# CI runs the property tests on a fixed sequence of examples (a red CI must mean a regression, not a new random
# draw); locally every run explores new ones.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_health(uri: str, process: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {process.returncode}")
        try:
            if requests.get(f"{uri}/health", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"mlflow server at {uri} did not become healthy in {timeout}s")


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> str:
    """A real `mlflow server` (sqlite backend, proxied artifacts) on a free loopback port; yields its URI."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = open(root / "server.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server",
         "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
         "--artifacts-destination", str(root / "artifacts"), "--serve-artifacts",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, cwd=root, start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(uri, process)
        yield uri
    finally:
        # The server starts helper processes (workers, a job consumer): stop its whole session, not just the parent.
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole session (starting Ray takes seconds); searches in this process reuse it."""
    import ray

    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # One logical GPU (there is no physical one): lets tests see how Ray assigns GPUs to tasks and trials. Trials of
    # the searches here ask for none, so they never wait for it.
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def load_yaml(name: str) -> dict:
    return yaml.safe_load((CONFIGS / name).read_text())


@pytest.fixture
def digits_raw() -> dict:
    """The digits reference config as a mapping (tests shrink it)."""
    return copy.deepcopy(load_yaml("digits.yaml"))


def shrink(raw: dict, name: str, tracking_uri: str, num_samples: int = 6, max_epochs: int = 4) -> dict:
    """A tiny-budget copy of a config: few trials, few epochs, small networks, 2 trials at a time."""
    raw = copy.deepcopy(raw)
    raw["name"] = name
    raw["search"].update(num_samples=num_samples, max_concurrent=2)
    raw["scheduler"].update(max_epochs=max_epochs, grace_period=1)
    raw["tracking"] = {"uri": tracking_uri, "log_models": "all"}
    if isinstance(raw["space"].get("units"), dict):
        raw["space"]["units"].update(low=8, high=32)
    return raw
