"""Nothing lost when things break: a killed worker, a killed driver, a tracking-server outage, diverging trials.

Real processes throughout: `hps` runs as a subprocess joined to the session's Ray, against real `mlflow server`
processes; the faults are real signals to real processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from search.config import parse_config
from search.leaderboard import find_search_run, trial_runs
from search.tuner import SchedulerState, SearchFailed, run_search
from tests.conftest import free_port, load_yaml, shrink, wait_for_health

pytestmark = pytest.mark.slow
TIMEOUT = 240


def slow_config(path: Path, name: str, uri: str, num_samples: int, max_epochs: int, **search) -> Path:
    """Digits trials that take a few seconds each (wide layers, small batches: ~0.3 s an epoch on 2 cores), so
    faults land mid-trial even though MLflow, which the tests watch, trails Tune by up to ~2 s (reports of short
    epochs are merged for up to 1 s, MLflow writes for up to 1 s more)."""
    raw = shrink(load_yaml("digits.yaml"), name, uri, num_samples=num_samples, max_epochs=max_epochs)
    raw["space"] = {"n_layers": 2, "units": 1024, "batch_size": 16, "optimizer": "adam",
                    "lr": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True},
                    "dropout": {"type": "float", "low": 0.0, "high": 0.3}}
    raw["scheduler"] = {"type": "fifo", "max_epochs": max_epochs, "grace_period": 1}
    raw["search"].update(search)
    path.write_text(yaml.safe_dump(raw))
    return path


def start_hps(*args: str, cwd: Path) -> subprocess.Popen:
    log = open(cwd / f"hps-{time.monotonic_ns()}.log", "w")
    return subprocess.Popen([sys.executable, "-m", "search.cli", *args], stdout=log, stderr=subprocess.STDOUT, cwd=cwd)


def wait_until(condition, timeout: float = TIMEOUT, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def children(client: MlflowClient, name: str):
    try:
        return trial_runs(client, find_search_run(client, name))
    except Exception:  # noqa: BLE001 - not created yet, or the server is restarting
        return []


def assert_clean_histories(client: MlflowClient, runs) -> None:
    """Every run ended, and its metric history has each epoch exactly once, from 1 to the last."""
    for run in runs:
        assert run.info.status in ("FINISHED", "FAILED", "KILLED"), run.info.status
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
        assert sorted(steps) == list(range(1, int(run.data.tags["hps.last_epoch"]) + 1)), (run.info.run_name, steps)


def output_of(cwd: Path) -> str:
    return "\n".join(p.read_text() for p in sorted(cwd.glob("hps-*.log")))


def test_killed_worker_is_retried_from_its_checkpoint(ray_session, mlflow_server, tmp_path):
    address = ray_session.get_runtime_context().gcs_address
    config = slow_config(tmp_path / "c.yaml", "kill-worker", mlflow_server, num_samples=3, max_epochs=16, max_failures=2)
    proc = start_hps("run", str(config), "--address", address, "--storage", str(tmp_path / "runs"), cwd=tmp_path)
    client = MlflowClient(mlflow_server)

    def running_trial_with_two_epochs():
        for run in children(client, "kill-worker"):
            if run.info.status == "RUNNING" and "pid" in run.data.tags and 2 <= run.data.metrics.get("best_epoch", 0):
                if int(run.data.tags.get("hps.last_epoch", 0)) == 0:
                    return run
        return None

    victim = wait_until(running_trial_with_two_epochs, what="a trial two epochs in")
    os.kill(int(victim.data.tags["pid"]), signal.SIGKILL)
    assert proc.wait(TIMEOUT) == 0, output_of(tmp_path)

    runs = children(client, "kill-worker")
    assert len(runs) == 3 and len({r.data.tags["hps.trial_id"] for r in runs}) == 3, [r.data.tags for r in runs]
    # The killed process is the actor that ran the victim; with reuse_actors it may already have moved on to the
    # next trial when the signal lands (MLflow trails Tune slightly). Either way exactly that trial is retried.
    retried = [r for r in runs if int(r.data.tags.get("hps.retries", 0)) >= 1]
    assert len(retried) == 1, ([r.data.tags for r in runs], output_of(tmp_path))
    assert {r.data.tags["hps.outcome"] for r in runs} == {"completed"}
    assert_clean_histories(client, runs)


def test_driver_killed_then_resumed_without_duplicates(ray_session, mlflow_server, tmp_path):
    address = ray_session.get_runtime_context().gcs_address
    storage = str(tmp_path / "runs")
    config = slow_config(tmp_path / "c.yaml", "kill-driver", mlflow_server, num_samples=6, max_epochs=12)
    proc = start_hps("run", str(config), "--address", address, "--storage", storage, cwd=tmp_path)
    client = MlflowClient(mlflow_server)
    wait_until(lambda: "[2/6 done" in output_of(tmp_path), what="two trials done")
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    time.sleep(3)  # let Ray notice the dead driver and stop its trial actors

    again = start_hps("run", str(config), "--address", address, "--storage", storage, cwd=tmp_path)
    assert again.wait(TIMEOUT) == 2 and "hps resume kill-driver" in output_of(tmp_path)

    resumed = start_hps("resume", "kill-driver", "--address", address, "--storage", storage, cwd=tmp_path)
    assert resumed.wait(TIMEOUT) == 0, output_of(tmp_path)

    runs = children(client, "kill-driver")
    assert len(runs) == 6, [r.data.tags.get("hps.trial_id") for r in runs]
    assert len({r.data.tags["hps.trial_id"] for r in runs}) == 6
    assert_clean_histories(client, runs)
    parent = find_search_run(client, "kill-driver")
    assert parent.info.status == "FINISHED"
    best = min(runs, key=lambda r: r.data.metrics["best_val_loss"])
    assert parent.data.tags["hps.best_run_id"] == best.info.run_id


def test_tracking_server_outage_mid_search(ray_session, tmp_path):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server_cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path}/m.db",
                  "--artifacts-destination", str(tmp_path / "art"), "--serve-artifacts",
                  "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]

    def start_server() -> subprocess.Popen:
        server = subprocess.Popen(server_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True, cwd=tmp_path)
        wait_for_health(uri, server)
        return server

    def stop_server(server: subprocess.Popen) -> None:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)

    server = start_server()
    try:
        address = ray_session.get_runtime_context().gcs_address
        config = slow_config(tmp_path / "c.yaml", "outage", uri, num_samples=4, max_epochs=8)
        proc = start_hps("run", str(config), "--address", address, "--storage", str(tmp_path / "runs"), cwd=tmp_path)
        client = MlflowClient(uri)
        wait_until(lambda: any(r.data.metrics.get("best_epoch", 0) >= 1 for r in children(client, "outage")),
                   what="first epochs logged")
        stop_server(server)
        time.sleep(6)  # trials keep training while the server is down
        assert proc.poll() is None, output_of(tmp_path)
        server = start_server()
        assert proc.wait(TIMEOUT) == 0, output_of(tmp_path)
        assert "buffering writes" in output_of(tmp_path)

        runs = children(client, "outage")
        assert len(runs) == 4
        assert {r.data.tags["hps.outcome"] for r in runs} == {"completed"}
        assert_clean_histories(client, runs)
        assert find_search_run(client, "outage").info.status == "FINISHED"
    finally:
        stop_server(server)


def test_diverging_trials_fail_with_a_reason_and_the_search_goes_on(ray_session, tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    raw = shrink(load_yaml("diabetes.yaml"), "diverge", uri, num_samples=8, max_epochs=4)
    raw["space"] = {"optimizer": "sgd", "momentum": 0.9, "norm": "none", "n_layers": 2, "units": 16,
                    "lr": {"type": "categorical", "choices": [0.003, 0.01, 1.0e4, 1.0e5]}}
    raw["search"].update(sampler="random", max_failures=2)
    raw["scheduler"]["type"] = "fifo"
    outcome = run_search(parse_config(raw), storage=str(tmp_path / "runs"))
    board = outcome.leaderboard
    failed = board[board["outcome"] == "failed"]
    assert len(failed) >= 1 and (board["outcome"] == "completed").any()
    client = MlflowClient(uri)
    for run_id in failed["run_id"]:
        run = client.get_run(run_id)
        assert run.info.status == "FAILED"
        assert run.data.tags["hps.outcome_note"].startswith("diverged: ")
        assert " at epoch " in run.data.tags["hps.outcome_note"]
        assert "retries" not in run.data.tags or run.data.tags["hps.retries"] == "0"  # not retried
    assert board.iloc[-1]["outcome"] == "failed"  # failed trials rank last


def test_a_search_where_every_trial_fails_says_so(ray_session, tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    raw = shrink(load_yaml("diabetes.yaml"), "all-diverge", uri, num_samples=2, max_epochs=3)
    raw["space"] = {"optimizer": "sgd", "momentum": 0.9, "norm": "none", "n_layers": 2, "units": 16,
                    "lr": {"type": "float", "low": 1e6, "high": 1e8}}
    with pytest.raises(SearchFailed, match="all 2 trials failed.*diverged"):
        run_search(parse_config(raw), storage=str(tmp_path / "runs"))
    assert find_search_run(MlflowClient(uri), "all-diverge").info.status == "FAILED"


def test_scheduler_state_survives_a_save_and_restore():
    from ray.tune.schedulers import ASHAScheduler

    first = ASHAScheduler(time_attr="epoch", max_t=9, grace_period=1, reduction_factor=3, metric="val_loss", mode="min")
    first._trial_info["t1"] = first._brackets[0]
    first._brackets[0]._rungs[-1][1]["t1"] = -0.5  # a recorded value at the first rung
    state = SchedulerState(first).get_state()
    fresh = ASHAScheduler(time_attr="epoch", max_t=9, grace_period=1, reduction_factor=3, metric="val_loss", mode="min")
    SchedulerState(fresh).set_state(state)
    assert fresh._brackets[0]._rungs[-1][1] == {"t1": -0.5} and "t1" in fresh._trial_info


def test_ctrl_c_stops_cleanly_and_prints_the_resume_command(ray_session, mlflow_server, tmp_path):
    address = ray_session.get_runtime_context().gcs_address
    storage = str(tmp_path / "runs")
    config = slow_config(tmp_path / "c.yaml", "ctrl-c", mlflow_server, num_samples=6, max_epochs=12)
    proc = start_hps("run", str(config), "--address", address, "--storage", storage, cwd=tmp_path)
    wait_until(lambda: "[2/6 done" in output_of(tmp_path), what="two trials done")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(TIMEOUT) == 130, output_of(tmp_path)
    assert f"hps resume ctrl-c --storage {storage}" in output_of(tmp_path)
    client = MlflowClient(mlflow_server)
    assert find_search_run(client, "ctrl-c").info.status == "KILLED"
    # Trials that were running are ended as interrupted (trials not started yet have no run at all).
    for run in children(client, "ctrl-c"):
        assert (run.info.status, run.data.tags["hps.outcome"]) in {("FINISHED", "completed"), ("KILLED", "interrupted")}

    resumed = start_hps("resume", "ctrl-c", "--address", address, "--storage", storage, cwd=tmp_path)
    assert resumed.wait(TIMEOUT) == 0, output_of(tmp_path)
    runs = children(client, "ctrl-c")
    assert len(runs) == 6 and {r.data.tags["hps.outcome"] for r in runs} == {"completed"}
    assert_clean_histories(client, runs)
    assert find_search_run(client, "ctrl-c").info.status == "FINISHED"
