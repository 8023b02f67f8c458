"""A real two-node Ray cluster on one machine, without Docker: what docs/cluster.md's "Without Docker" steps do.

`ray start --head` and `ray start --address=HEAD` run as separate process trees (separate raylets, separate
node IDs, one logical CPU each) with token authentication, next to a real `mlflow server` with proxied artifacts
(the session's ``mlflow_server`` fixture). `hps run --address HEAD --tracking-uri SERVER` runs as a subprocess, the
way a user on a cluster node runs it. Two trials at a time on two 1-CPU nodes must land on both nodes.

With `moto` installed (dev extras) a local S3-compatible server (`moto.server`, a real HTTP server) runs too, and
the search uses `--storage s3://BUCKET/PREFIX`: both nodes write checkpoints to the bucket through Ray's pyarrow S3
filesystem (`AWS_ENDPOINT_URL`, as for MinIO). Without it, a local folder is the shared storage. One search serves
every test (each trial worker started costs seconds); the last test deletes its state.

The nodes are stopped by killing exactly the processes of the two sessions this module started (never `ray stop`,
which would also stop the test session's own Ray and any other Ray on the machine).
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from search.records.leaderboard import find_search_run, trial_runs
from tests.conftest import ROOT, free_port, load_yaml, shrink
from tests.user_networks import COURSE_NOTES_MLP
from trainables.checkpoint import load_model

pytestmark = pytest.mark.slow

NODE_IP = "127.0.0.1"
BUCKET = "hps-checkpoints"
# Two trials at once on two 1-CPU nodes. Four trials, not two: on a heavily loaded machine both of two 3-epoch trials
# once ran on one node (the second presumably reusing the first one's actor before a new one started on the other).
NUM_SAMPLES, MAX_EPOCHS = 4, 3
OBJECT_STORE_BYTES = 100 * 1024**2  # Ray's default reserves a third of RAM per node; the test needs a few MB


def _cluster_env(token: str, s3_endpoint: str | None) -> dict[str, str]:
    """The environment of every process of the test cluster: head, worker, and drivers."""
    # Nothing from outside that would point Ray or pyarrow elsewhere (RAY_ADDRESS, real AWS settings).
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
    if s3_endpoint:  # what docs/cluster.md gives ray-head, ray-worker and hps for MinIO
        env.update(AWS_ENDPOINT_URL=s3_endpoint, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                   AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


class RayNode:
    """One `ray start --block` node in its own session (process group), so that stopping it stops all of it."""

    def __init__(self, name: str, args: list[str], temp_dir: Path, env: dict[str, str]) -> None:
        self.name = name
        self.log_path = temp_dir.parent / f"{name}.log"
        self.log = open(self.log_path, "w")
        ray = str(Path(sys.executable).with_name("ray"))
        common = [
            "--block", "--node-ip-address", NODE_IP, "--num-cpus", "1", "--num-gpus", "0",
            "--object-store-memory", str(OBJECT_STORE_BYTES), "--temp-dir", str(temp_dir),
            # Distinct free ports: the defaults (e.g. 52365 for the dashboard agent) would collide between the
            # two nodes on one machine and with any other Ray running here.
            "--dashboard-agent-listen-port", str(free_port()), "--metrics-export-port", str(free_port()),
            "--disable-usage-stats",
        ]
        self.process = subprocess.Popen(
            [ray, "start", *args, *common], stdout=self.log, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,
        )

    def check_running(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"ray {self.name} exited with {self.process.returncode}:\n{self.tail()}")

    def tail(self, chars: int = 3000) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]


def _stop_nodes(nodes: list[RayNode]) -> None:
    """SIGTERM every process of the nodes' sessions (graceful), then SIGKILL whatever is left.

    Sessions, not process groups: Ray puts each of its worker processes into a process group of its own, but they
    all stay in the session that `start_new_session` created for `ray start`. Nothing outside them is touched.
    """
    sessions = [node.process.pid for node in nodes]
    for sig, grace in ((signal.SIGTERM, 3), (signal.SIGKILL, 15)):
        for sid in sessions:
            for pid in _session_pids(sid):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_session_pids(sid) for sid in sessions):
            for node in nodes:
                node.process.poll()  # reap the session leaders, our children
            time.sleep(0.2)
        if not any(_session_pids(sid) for sid in sessions):
            break
    for node in nodes:
        node.process.wait(timeout=10)
        node.log.close()
    left = {node.name: _session_pids(node.process.pid) for node in nodes if _session_pids(node.process.pid)}
    assert not left, f"processes of the test cluster survived SIGKILL: {left}"


def _session_pids(sid: int) -> list[int]:
    """Live (non-zombie) processes of session ``sid``, from /proc."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # exited meanwhile
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state ppid pgrp session ...
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids


# Joins the cluster as a driver and waits until the expected number of 1-CPU nodes is alive and all their CPUs are
# free (the actors of a previous search's driver are released a moment after it exits); prints the node IDs.
WAIT_FOR_NODES = textwrap.dedent(
    """
    import json, sys, time
    import ray
    address, expected, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    ray.init(address=address, log_to_driver=False, include_dashboard=False, configure_logging=False)
    deadline = time.monotonic() + timeout
    while True:
        nodes = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU") == 1.0]
        idle = ray.available_resources().get("CPU", 0) >= expected
        if (len(nodes) >= expected and idle) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    head = [n["NodeID"] for n in nodes if "node:__internal_head__" in n["Resources"]]
    print(json.dumps({"nodes": [n["NodeID"] for n in nodes], "head": head[0] if head else None}))
    """
)


@pytest.fixture(scope="module")
def s3_endpoint():
    """A local S3-compatible server (moto) on a free loopback port with bucket ``BUCKET``; None without moto."""
    if importlib.util.find_spec("moto") is None:
        yield None
        return
    port = free_port()
    endpoint = f"http://{NODE_IP}:{port}"
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", NODE_IP, "-p", str(port)],
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait_for_port(port, process, "moto server", timeout=60)
            _s3(endpoint).create_dir(BUCKET)  # creates the bucket
            yield endpoint
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def _s3(endpoint: str):
    import pyarrow.fs

    return pyarrow.fs.S3FileSystem(endpoint_override=endpoint, access_key="testing", secret_key="testing",
                                   region="us-east-1", allow_bucket_creation=True)


@pytest.fixture(scope="module")
def cluster(s3_endpoint):
    """A head and a worker node started with `ray start`; yields (GCS address, node IDs, head ID, driver env)."""
    token = secrets.token_hex(16)
    env = _cluster_env(token, s3_endpoint)
    # A short root: Ray's Unix socket paths live under the temp dir and must stay below ~107 characters.
    root = Path(tempfile.mkdtemp(prefix="hps-mn-", dir="/tmp" if os.path.isdir("/tmp") else None))
    port = free_port()
    address = f"{NODE_IP}:{port}"
    nodes: list[RayNode] = []
    try:
        nodes.append(RayNode("head", [
            "--head", "--port", str(port), "--include-dashboard", "false", "--dashboard-port", str(free_port()),
        ], root / "head", env))
        _wait_for_port(port, nodes[0].process, "Ray head", timeout=120, log=nodes[0].tail)
        nodes.append(RayNode("worker", ["--address", address], root / "worker", env))
        found = _wait_for_idle_nodes(address, env, timeout=120)
        for node in nodes:
            node.check_running()
        node_ids = set(found["nodes"])
        assert len(node_ids) == 2 and found["head"] in node_ids, (
            f"expected 2 alive nodes, got {found}\n" + "\n".join(n.tail() for n in nodes)
        )
        yield address, node_ids, found["head"], env
    finally:
        try:
            _stop_nodes(nodes)
        finally:
            shutil.rmtree(root, ignore_errors=True)


def _wait_for_idle_nodes(address: str, env: dict[str, str], timeout: float) -> dict:
    waited = subprocess.run([sys.executable, "-c", WAIT_FOR_NODES, address, "2", str(timeout)],
                            capture_output=True, text=True, env=env, timeout=timeout + 80)
    assert waited.returncode == 0, waited.stderr[-3000:]
    return json.loads(waited.stdout.strip().splitlines()[-1])


def _wait_for_port(port: int, process: subprocess.Popen, what: str, timeout: float, log=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}:\n{log()}")
        try:
            with socket.create_connection((NODE_IP, port), timeout=1):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout}s:\n{log()}")


def _search_config(tmp_path: Path, name: str, tracking_uri: str) -> Path:
    raw = shrink(load_yaml("digits.yaml"), name, tracking_uri, num_samples=NUM_SAMPLES, max_epochs=MAX_EPOCHS,
                 max_concurrent=2)
    raw["resources"] = {"cpus_per_trial": 1, "gpus_per_trial": 0}  # one trial fills a node: 2 at a time → 2 nodes
    # The user's own network (the course notes' MLP, in a file beside the config): its code must reach the trials
    # of both nodes, which read it from the trial's settings (Ray's object store), never from this folder.
    (tmp_path / "notes_mlp.py").write_text(COURSE_NOTES_MLP)
    raw["model"] = {"builder": "notes_mlp.py:MultilayerPerceptron"}
    raw["space"] = {key: raw["space"][key] for key in ("lr", "weight_decay", "batch_size")}
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump(raw))
    return config


def _hps_run(config: Path, address: str, tracking_uri: str, storage: str, env: dict, cwd: Path, *extra: str):
    return subprocess.run(
        [sys.executable, "-m", "search.cli", "run", str(config), "--address", address,
         "--tracking-uri", tracking_uri, "--storage", storage, *extra],
        capture_output=True, text=True, env=env, cwd=cwd, timeout=240,
    )


@dataclass(frozen=True)
class Searched:
    """The module's search: its name, its storage, its trial runs, its config and the folder it ran in."""

    name: str
    storage: str
    children: list
    config: Path
    cwd: Path


@pytest.fixture(scope="module")
def searched(cluster, s3_endpoint, mlflow_server, tmp_path_factory) -> Searched:
    """One search on the two-node cluster, storing in the S3 bucket (in a local folder without moto)."""
    address, _node_ids, _head_id, env = cluster
    name = "multinode-digits"
    cwd = tmp_path_factory.mktemp("multinode")
    config = _search_config(cwd, name, mlflow_server)
    storage = f"s3://{BUCKET}/searches" if s3_endpoint else str(cwd / "shared-runs")  # "shared": one machine
    run = _hps_run(config, address, mlflow_server, storage, env, cwd)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    assert f"{NUM_SAMPLES} trials" in run.stdout
    client = MlflowClient(mlflow_server)
    return Searched(name, storage, trial_runs(client, find_search_run(client, name)), config, cwd)


def test_search_spreads_trials_over_two_nodes_and_uploads_models_through_the_server(cluster, searched,
                                                                                     mlflow_server):
    _address, node_ids, head_id, _env = cluster
    children, cwd = searched.children, searched.cwd
    assert len(children) == NUM_SAMPLES
    # Every trial ran on one of the cluster's two nodes, and both nodes ran trials.
    assert {c.data.tags["node_id"] for c in children} == node_ids
    assert {c.data.tags["hostname"] for c in children} == {socket.gethostname()}

    # Model artifacts went through the tracking server (proxied `mlflow-artifacts:` store, no direct file access);
    # with S3 storage, from the bucket through the driver.
    client = MlflowClient(mlflow_server)
    for child in children:
        assert child.info.artifact_uri.startswith("mlflow-artifacts:"), child.info.artifact_uri
        assert {a.path for a in client.list_artifacts(child.info.run_id, "model")} == {
            "model/weights.pt", "model/model.json", "model/code"
        }
    worker_trial = next(c for c in children if c.data.tags["node_id"] != head_id)
    local = client.download_artifacts(worker_trial.info.run_id, "model", str(cwd / "download"))
    _model, description = load_model(local)
    assert description["epoch"] == int(worker_trial.data.metrics["best_epoch"])
    assert description["architecture"]["network"]["source"] == COURSE_NOTES_MLP  # trained on the worker node


def test_the_shared_storage_holds_the_state_of_both_nodes(searched, s3_endpoint):
    name, storage = searched.name, searched.storage
    trial_ids = {c.data.tags["hps.trial_id"] for c in searched.children}
    if s3_endpoint is None:
        # The trials of both nodes kept their state in the one shared folder (their checkpoint folders may already
        # be pruned once the model is in MLflow; the trial folders stay).
        stored = {path.name.split("_")[2] for path in (Path(storage) / name).glob("tune_trainable_*") if path.is_dir()}
        assert stored == trial_ids
        return
    import pyarrow.fs

    keys = [i.path for i in _s3(s3_endpoint).get_file_info(
        pyarrow.fs.FileSelector(f"{BUCKET}/searches/{name}", recursive=True))]
    assert any(k.rsplit("/", 1)[-1].startswith("experiment_state") for k in keys)  # the driver's state
    # Every trial, from either node, checkpointed into the bucket (search.records.tracking prunes local checkpoints only).
    checkpointed = {k.split("/")[3].split("_")[2] for k in keys if k.endswith("/model/weights.pt")}
    assert checkpointed == trial_ids


def test_the_same_name_in_the_bucket_is_refused_and_overwrite_starts_over(cluster, searched, s3_endpoint,
                                                                          mlflow_server, monkeypatch, capsys):
    if s3_endpoint is None:
        pytest.skip("moto is not installed (pip install -e '.[dev]'): no local S3 server")
    address, _node_ids, _head_id, env = cluster
    name, storage, config = searched.name, searched.storage, searched.config
    # The same name in the same bucket is refused before anything runs (before Ray: `hps run` in this process,
    # with the bucket's credentials), as for a folder; --overwrite starts over. Last in this module: it deletes the
    # search's state.
    import pyarrow.fs

    from search.cli import main as hps_main
    from search.config.schema import load_config
    from search.run.tuner import run_search

    for key in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(key, env[key])
    capsys.readouterr()
    refused = hps_main(["run", str(config), "--address", address, "--tracking-uri", mlflow_server, "--storage", storage])
    said = capsys.readouterr().err
    assert refused == 2 and "already exists" in said and "--overwrite" in said, said
    # --overwrite deletes the old state before anything else is recorded: stopped right there (at the
    # announcement every `hps run` makes once its input checks pass), the search's folder in the bucket is gone.

    class Announced(Exception):
        pass

    def stop(_split):
        raise Announced

    with pytest.raises(Announced):
        run_search(load_config(config), address=address, storage=storage, overwrite=True, announce=stop)
    assert _s3(s3_endpoint).get_file_info(f"{BUCKET}/searches/{name}").type == pyarrow.fs.FileType.NotFound
