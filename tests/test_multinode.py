"""A real two-node Ray cluster on one machine, without Docker: what docs/cluster.md's "Without Docker" steps do.

`ray start --head` and `ray start --address=HEAD` run as separate process trees (separate raylets, separate
node IDs, one logical CPU each) with token authentication, next to a real `mlflow server` with proxied artifacts
(the session's ``mlflow_server`` fixture). `hps run --address HEAD --tracking-uri SERVER` runs as a subprocess, the
way a user on a cluster node runs it. Two trials at a time on two 1-CPU nodes must land on both nodes.

The nodes are stopped by killing exactly the process groups this module started (never `ray stop`, which would
also stop the test session's own Ray).
"""

from __future__ import annotations

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
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from search.leaderboard import find_search_run, trial_runs
from tests.conftest import ROOT, free_port, load_yaml, shrink
from trainables.checkpoint import load_model

pytestmark = pytest.mark.slow

NODE_IP = "127.0.0.1"
NUM_SAMPLES, MAX_EPOCHS = 4, 3
OBJECT_STORE_BYTES = 100 * 1024**2  # Ray's default reserves a third of RAM per node; the test needs a few MB


def _cluster_env(token: str) -> dict[str, str]:
    """The environment of every process of the test cluster: head, worker, and drivers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # no RAY_ADDRESS etc. from outside
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
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

    def stop(self) -> None:
        """SIGTERM every process of the node's session (graceful), then SIGKILL whatever of it is left.

        The session, not the process group: Ray puts each of its worker processes into a process group of its
        own, but they all stay in the session `start_new_session` created for `ray start`.
        """
        sid = self.process.pid
        for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
            for pid in _session_pids(sid):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and _session_pids(sid):
                self.process.poll()  # reap the session leader, our child
                time.sleep(0.2)
            if not _session_pids(sid):
                break
        self.process.wait(timeout=10)
        self.log.close()
        left = _session_pids(sid)
        assert not left, f"ray {self.name}: processes {left} survived SIGKILL"


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


# Joins the cluster as a driver and waits until the expected number of nodes is alive; prints their IDs.
WAIT_FOR_NODES = textwrap.dedent(
    """
    import json, sys, time
    import ray
    address, expected, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    ray.init(address=address, log_to_driver=False, include_dashboard=False, configure_logging=False)
    deadline = time.monotonic() + timeout
    while True:
        nodes = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU") == 1.0]
        if len(nodes) >= expected or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    head = [n["NodeID"] for n in nodes if "node:__internal_head__" in n["Resources"]]
    print(json.dumps({"nodes": [n["NodeID"] for n in nodes], "head": head[0] if head else None}))
    """
)


@pytest.fixture(scope="module")
def cluster():
    """A head and a worker node started with `ray start`; yields (GCS address, node IDs, env for drivers)."""
    token = secrets.token_hex(16)
    env = _cluster_env(token)
    # A short root: Ray's Unix socket paths live under the temp dir and must stay below ~107 characters.
    root = Path(tempfile.mkdtemp(prefix="hps-mn-", dir="/tmp" if os.path.isdir("/tmp") else None))
    port = free_port()
    address = f"{NODE_IP}:{port}"
    nodes: list[RayNode] = []
    try:
        nodes.append(RayNode("head", [
            "--head", "--port", str(port), "--include-dashboard", "false", "--dashboard-port", str(free_port()),
        ], root / "head", env))
        _wait_for_gcs(port, nodes[0], timeout=90)
        nodes.append(RayNode("worker", ["--address", address], root / "worker", env))
        waited = subprocess.run(
            [sys.executable, "-c", WAIT_FOR_NODES, address, "2", "90"], capture_output=True, text=True, env=env,
            timeout=150,
        )
        for node in nodes:
            node.check_running()
        assert waited.returncode == 0, waited.stderr[-3000:]
        found = json.loads(waited.stdout.strip().splitlines()[-1])
        node_ids = set(found["nodes"])
        assert len(node_ids) == 2 and found["head"] in node_ids, (
            f"expected 2 alive nodes, got {found}\n" + "\n".join(n.tail() for n in nodes)
        )
        yield address, node_ids, found["head"], env
    finally:
        for node in reversed(nodes):
            node.stop()
        shutil.rmtree(root, ignore_errors=True)


def _wait_for_gcs(port: int, head: RayNode, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        head.check_running()
        try:
            with socket.create_connection((NODE_IP, port), timeout=1):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"Ray head did not listen on {port} within {timeout}s:\n{head.tail()}")


def test_search_spreads_trials_over_two_nodes_and_uploads_models_through_the_server(
    cluster, mlflow_server, tmp_path
):
    address, node_ids, head_id, env = cluster
    name = "multinode-digits"
    raw = shrink(load_yaml("digits.yaml"), name, mlflow_server, num_samples=NUM_SAMPLES, max_epochs=MAX_EPOCHS)
    raw["resources"] = {"cpus_per_trial": 1, "gpus_per_trial": 0}  # one trial fills a node: 2 at a time → 2 nodes
    config = tmp_path / "search.yaml"
    config.write_text(yaml.safe_dump(raw))
    storage = tmp_path / "shared-runs"  # "shared": both nodes are on this machine

    run = subprocess.run(
        [sys.executable, "-m", "search.cli", "run", str(config), "--address", address,
         "--tracking-uri", mlflow_server, "--storage", str(storage)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=240,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    assert f"{NUM_SAMPLES} trials" in run.stdout

    client = MlflowClient(mlflow_server)
    children = trial_runs(client, find_search_run(client, name))
    assert len(children) == NUM_SAMPLES
    # Every trial ran on one of the cluster's two nodes, and both nodes ran trials.
    assert {c.data.tags["node_id"] for c in children} == node_ids
    assert {c.data.tags["hostname"] for c in children} == {socket.gethostname()}

    # Model artifacts went through the tracking server (proxied `mlflow-artifacts:` store, no direct file access).
    for child in children:
        assert child.info.artifact_uri.startswith("mlflow-artifacts:"), child.info.artifact_uri
        assert {a.path for a in client.list_artifacts(child.info.run_id, "model")} == {
            "model/weights.pt", "model/model.json"
        }
    worker_trial = next(c for c in children if c.data.tags["node_id"] != head_id)
    local = client.download_artifacts(worker_trial.info.run_id, "model", str(tmp_path / "download"))
    _model, description = load_model(local)
    assert description["epoch"] == int(worker_trial.data.metrics["best_epoch"])

    # Checkpoints of trials from both nodes are in the one shared storage location.
    assert len(list((storage / name).glob("tune_trainable_*/checkpoint_*/model/weights.pt"))) >= NUM_SAMPLES

