"""Shared fixtures: one real local Ray and one real `mlflow server` process per test session (per worker under
`make test`, which runs two: pytest-xdist)."""

from __future__ import annotations

import copy
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.fs
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


# MLflow's server starts a job runner and seven job consumers next to its web worker (for GenAI jobs, which hps
# never submits): about a core-second each at every start. The test servers run without them.
def server_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **extra}


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


def stop_process_group(process: subprocess.Popen, timeout: float = 20) -> None:
    """Stop a server started with ``start_new_session=True`` and every helper process it started: SIGTERM to its
    process group, SIGKILL if it has not exited within ``timeout`` seconds."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout)


class MlflowServer:
    """A real `mlflow server` (sqlite backend, proxied artifacts) on a free loopback port that can be stopped and
    started again on the same port, database and artifacts (an outage, a reboot)."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        if self.running:
            return
        with open(self.root / "server.log", "a") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server",
                 "--backend-store-uri", f"sqlite:///{self.root}/mlflow.db",
                 "--artifacts-destination", str(self.root / "art"), "--serve-artifacts",
                 "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.root, env=server_env(), start_new_session=True,
            )
        wait_for_health(self.uri, self.process)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """Stop the whole process group: the server starts helper processes (workers, a job consumer)."""
        if self.running:
            stop_process_group(self.process)


@pytest.fixture(scope="session")
def mlflow_control(tmp_path_factory):
    """The session's one tracking server, for tests that stop and start it (an outage); they leave it running."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def mlflow_link(mlflow_control):
    """The session's tracking server through a network path the test can cut (an outage) and restore
    (tests/network.py); the server itself keeps running."""
    from tests.network import CuttableLink

    link = CuttableLink(mlflow_control.port)
    try:
        yield link
    finally:
        link.cut()


@pytest.fixture(scope="session")
def mlflow_server(mlflow_control) -> str:
    """The URI of the session's real `mlflow server`."""
    return mlflow_control.uri


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


@pytest.fixture(autouse=True)
def mlflow_global_uris_reset():
    """MLflow's process-wide tracking and registry URIs (and the environment variables setting them writes) are
    restored after each test: a test that points them at its server must not send a later test's registrations
    there (tests/review/test_evaluate.py left the registry URI at the session's server, which made the recorded-search
    registrations of tests/review/test_evaluate_recorded.py and tests/review/test_registry.py fail in a full run)."""
    from search.records.connection import preserved_uris

    with preserved_uris():
        yield


def pytest_collection_modifyitems(items) -> None:
    """Every test that joins the session's Ray (a real search, or Ray itself) is slow, wherever it lives:
    `make test-fast` (``-m "not slow"``) never starts Ray.

    Files run longest first: `make test` runs two workers (pytest-xdist, one file at a time each), and the many short
    files left at the end keep both busy until the last long one is done. ``LONGEST_FILES`` only orders them (a
    stale list costs minutes, never a result); other files with slow tests come next, the fast ones last."""
    for item in items:
        if "ray_session" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}

    def order(item) -> tuple[bool, int]:
        rank = LONGEST_FILES.index(item.path.name) if item.path.name in LONGEST_FILES else len(LONGEST_FILES)
        return item.path not in slow_files, rank

    items.sort(key=order)  # stable: each file's own order is kept


# Measured under two workers, 2026-11-30 (after the searches were trimmed): about 85, 70, 60, 45, 40, 35, 30,
# 30 and 25 s; test_packing.py gained its soak search (about 35 s) on 2026-12-05, and test_pack_server.py (its
# fault scenarios, about 35 s) came in then; test_network_search.py (about 40 s), test_mlflow_review.py (about 30 s)
# and test_fuzz_data.py's whole searches (about 20 s) on the same day, later.
LONGEST_FILES = ("test_packing.py", "test_resilience.py", "test_benchmarks.py", "test_evaluate.py",
                 "test_outage.py", "test_network_search.py", "test_search_integration.py", "test_mlflow_review.py",
                 "test_pack_server.py", "test_cli.py", "test_compose.py", "test_multinode.py", "test_fuzz_data.py")


def load_yaml(name: str) -> dict:
    return yaml.safe_load((CONFIGS / name).read_text())


@pytest.fixture
def digits_raw() -> dict:
    """The digits reference config as a mapping (tests shrink it)."""
    return copy.deepcopy(load_yaml("digits.yaml"))


def shrink(raw: dict, name: str, tracking_uri: str, num_samples: int = 6, max_epochs: int = 4,
           max_concurrent: int = 1) -> dict:
    """A tiny-budget copy of a config: few trials, few epochs, small networks, one trial at a time unless asked.

    One at a time: a tiny trial trains in milliseconds, so a search's wall time is its trial worker's start (~3
    CPU-seconds: Ray, Tune, torch imports); a second worker takes the same wall time and the other core with it,
    which the test running beside it (`make test` runs two at once) needs more."""
    raw = copy.deepcopy(raw)
    raw["name"] = name
    raw["search"].update(num_samples=num_samples, max_concurrent=max_concurrent)
    raw["scheduler"].update(max_epochs=max_epochs, grace_period=1)
    # No review plots (~2 s of CPU a search, in every search of the suite): tests of the report ask for them.
    raw["tracking"] = {"uri": tracking_uri, "log_models": "all", "review_plots": False}
    # A handful of trials: `hps evaluate` tests the single best (the configs' top 5 would be most of the search);
    # tests of averaging ask for it.
    raw.pop("evaluate", None)
    if isinstance(raw["space"].get("units"), dict):
        raw["space"]["units"].update(low=8, high=32)
    return raw


@pytest.fixture(scope="session")
def s3_bucket():
    """A local S3-compatible server (moto) with bucket ``hps``; skipped where moto is not installed."""
    pytest.importorskip("moto")
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        s3 = pyarrow.fs.S3FileSystem(endpoint_override=endpoint, access_key="testing", secret_key="testing",
                                     region="us-east-1", allow_bucket_creation=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                s3.create_dir("hps")
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.5)
        yield endpoint, s3
    finally:
        process.terminate()
        process.wait(10)
