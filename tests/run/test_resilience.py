"""Nothing lost when things break: a killed worker, a tracking-server outage, Ctrl-C, a killed driver, diverging
trials.

Real processes throughout: `hps` runs as a subprocess joined to the session's Ray, against the session's real
`mlflow server` process (stopped and started again for the outage); the faults are real signals to real processes.
Each real search carries several faults that do not interfere, and every wait is for an event (a metric in MLflow,
a line of output, a checkpoint on disk, Ray's CPUs coming back), with a timeout, never a fixed sleep.
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

from search.cli import main as hps_main
from search.config.schema import parse_config
from search.records.leaderboard import find_search_run, trial_runs
from search.records.logged_models import trial_models
from search.run.ray_setup import SchedulerState
from search.run.tuner import run_search
from tests.conftest import load_yaml, shrink
from tests.stores import sqlite_store

pytestmark = pytest.mark.slow
TIMEOUT = 240


def slow_config(path: Path, name: str, uri: str, num_samples: int, max_epochs: int, **search) -> Path:
    """Digits trials whose epochs take a fraction of a second each (wide layers, small batches: ~0.3 s an epoch on
    2 cores), so faults land mid-trial. Every epoch is sent at once (``report_interval_s: 0``): MLflow, which the
    tests watch, trails Tune by at most the writer's merging (~1 s)."""
    # Two trials at a time: the faults land while another trial trains.
    raw = shrink(load_yaml("digits.yaml"), name, uri, num_samples=num_samples, max_epochs=max_epochs, max_concurrent=2)
    raw["space"] = {"n_layers": 2, "units": 1024, "batch_size": 16, "optimizer": "adam",
                    "lr": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True},
                    "dropout": {"type": "float", "low": 0.0, "high": 0.3}}
    raw["scheduler"] = {"type": "fifo", "max_epochs": max_epochs, "grace_period": 1}
    raw.setdefault("training", {})["report_interval_s"] = 0
    raw["search"].update(search)
    path.write_text(yaml.safe_dump(raw))
    return path


class Hps:
    """`hps ...` as a subprocess with its own log file (stdout and stderr)."""

    def __init__(self, *args: str, cwd: Path, env: dict | None = None) -> None:
        self.log = cwd / f"hps-{time.monotonic_ns()}.log"
        with open(self.log, "w") as out:
            self.process = subprocess.Popen([sys.executable, "-m", "search.cli", *args], stdout=out,
                                            stderr=subprocess.STDOUT, cwd=cwd, env=env)

    @property
    def output(self) -> str:
        return self.log.read_text()

    def wait(self, timeout: float = TIMEOUT) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(30)
            raise AssertionError(f"hps did not end within {timeout}s:\n{self.output[-3000:]}") from None


def start_hps(*args: str, cwd: Path, env: dict | None = None) -> Hps:
    return Hps(*args, cwd=cwd, env=env)


def wait_until(condition, timeout: float = TIMEOUT, what: str = "condition", alive: Hps | None = None):
    """Poll ``condition`` until it returns something true; fail at once if ``alive`` ended meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if alive is not None and alive.process.poll() is not None:
            raise AssertionError(f"hps ended ({alive.process.returncode}) while waiting for {what}:\n"
                                 f"{alive.output[-3000:]}")
        time.sleep(0.2)
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


def checkpoints(storage: Path, name: str) -> set[Path]:
    return set((storage / name).glob("tune_trainable_*/checkpoint_*"))


def test_killed_worker_and_tracking_outage_in_one_search(ray_session, mlflow_link, mlflow_server, tmp_path):
    """A trial's worker process is killed (SIGKILL) two epochs in: exactly that trial is retried from its
    checkpoint. Then the tracking server cannot be reached while trials train: the search keeps training, buffers its
    writes, and once the server is back every epoch of every trial is in MLflow exactly once."""
    address = ray_session.get_runtime_context().gcs_address
    storage = tmp_path / "runs"
    # 6 epochs: the victim is killed at epoch 2+ and the outage needs one more epoch; the retry and the third trial
    # leave several epochs to train meanwhile.
    # `hps` reaches the server through a path that is cut below; the test reads it directly.
    config = slow_config(tmp_path / "c.yaml", "faults", mlflow_link.uri, num_samples=3, max_epochs=6,
                         max_failures=2)
    proc = start_hps("run", str(config), "--address", address, "--storage", str(storage), cwd=tmp_path)
    client = MlflowClient(mlflow_server)

    def running_trial_with_two_epochs():
        for run in children(client, "faults"):
            if run.info.status == "RUNNING" and "pid" in run.data.tags and 2 <= run.data.metrics.get("best_epoch", 0):
                if int(run.data.tags.get("hps.last_epoch", 0)) == 0:
                    return run
        return None

    victim = wait_until(running_trial_with_two_epochs, what="a trial two epochs in", alive=proc)
    os.kill(int(victim.data.tags["pid"]), signal.SIGKILL)

    try:
        mlflow_link.cut()  # the outage: trials keep training while the server cannot be reached
        before = checkpoints(storage, "faults")
        wait_until(lambda: "buffering writes" in proc.output, what="writes buffered", alive=proc)
        wait_until(lambda: checkpoints(storage, "faults") - before, what="an epoch trained during the outage",
                   alive=proc)
    finally:
        mlflow_link.restore()
    assert proc.wait() == 0, proc.output
    # Said in two lines, gone and back, not once per retried request (urllib3's warnings: 163 lines for 15 s once).
    assert "Retrying (" not in proc.output and proc.output.count("tracking server unavailable") == 1, proc.output

    runs = children(client, "faults")
    assert len(runs) == 3 and len({r.data.tags["hps.trial_id"] for r in runs}) == 3, [r.data.tags for r in runs]
    # The killed process is the actor that ran the victim; with reuse_actors it may already have moved on to the
    # next trial when the signal lands (MLflow trails Tune slightly). Either way exactly that trial is retried.
    retried = [r for r in runs if int(r.data.tags.get("hps.retries", 0)) >= 1]
    assert len(retried) == 1, ([r.data.tags for r in runs], proc.output)
    assert {r.data.tags["hps.outcome"] for r in runs} == {"completed"}
    assert_clean_histories(client, runs)
    assert find_search_run(client, "faults").info.status == "FINISHED"


def test_ctrl_c_then_a_killed_driver_then_resumed_without_duplicates(ray_session, mlflow_server, tmp_path, capsys):
    """Ctrl-C stops cleanly (exit 130, the resume command printed, running trials ended as interrupted); the
    resumed search's driver is then killed (SIGKILL); `hps run` of the same search is refused with the resume
    command; `hps resume` finishes it with each trial once and each epoch once."""
    address = ray_session.get_runtime_context().gcs_address
    storage = str(tmp_path / "runs")
    name = "interrupted"
    # One trial at a time: each of the three drivers starts one trial worker (~3 CPU-seconds), not two.
    config = slow_config(tmp_path / "c.yaml", name, mlflow_server, num_samples=4, max_epochs=4, max_concurrent=1)
    client = MlflowClient(mlflow_server)

    first = start_hps("run", str(config), "--address", address, "--storage", storage, cwd=tmp_path)
    wait_until(lambda: "[1/4 done" in first.output, what="a trial done", alive=first)
    first.process.send_signal(signal.SIGINT)
    assert first.wait() == 130, first.output
    assert f"hps resume {name} --storage {storage}" in first.output
    assert find_search_run(client, name).info.status == "KILLED"
    # Trials that were running are ended as interrupted (trials not started yet have no run at all).
    for run in children(client, name):
        assert (run.info.status, run.data.tags["hps.outcome"]) in {("FINISHED", "completed"), ("KILLED", "interrupted")}

    second = start_hps("resume", name, "--address", address, "--storage", storage, cwd=tmp_path)
    wait_until(lambda: " done, " in second.output, what="a trial done after resuming", alive=second)
    second.process.send_signal(signal.SIGKILL)
    second.process.wait(30)
    # Ray notices the dead driver and stops its trial actors: both CPUs free again.
    wait_until(lambda: ray_session.available_resources().get("CPU", 0) >= 2, timeout=60, what="the trials stopped")

    # The refusal comes before Ray or any run (search.run.tuner.run_search): the same code in this process.
    capsys.readouterr()
    refused = hps_main(["run", str(config), "--address", address, "--storage", storage])
    said = capsys.readouterr().err
    assert refused == 2 and f"hps resume {name}" in said, said

    # The last resume in this process: the same `hps resume` (search.cli.main), without ~3 s of imports.
    assert hps_main(["resume", name, "--address", address, "--storage", storage]) == 0, capsys.readouterr()

    runs = children(client, name)
    assert len(runs) == 4, [r.data.tags.get("hps.trial_id") for r in runs]
    assert len({r.data.tags["hps.trial_id"] for r in runs}) == 4
    assert {r.data.tags["hps.outcome"] for r in runs} == {"completed"}
    assert_clean_histories(client, runs)
    parent = find_search_run(client, name)
    assert parent.info.status == "FINISHED"
    best = min(runs, key=lambda r: r.data.metrics["best_val_loss"])
    assert parent.data.tags["hps.best_run_id"] == best.info.run_id
    # One LoggedModel per trial, none made twice by the interrupted runs and their resumes.
    assert sorted(m.source_run_id for m in trial_models(client, parent.info.experiment_id)) == \
        sorted(r.info.run_id for r in runs)


def test_diverging_trials_fail_with_a_reason_and_the_search_goes_on(ray_session, tmp_path):
    uri = sqlite_store(tmp_path / "m.db")
    raw = shrink(load_yaml("diabetes.yaml"), "diverge", uri, num_samples=8, max_epochs=2)
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


def test_a_search_where_every_trial_fails_says_so(ray_session, tmp_path, capsys):
    uri = sqlite_store(tmp_path / "m.db")
    raw = shrink(load_yaml("diabetes.yaml"), "all-diverge", uri, num_samples=2, max_epochs=2)
    raw["space"] = {"optimizer": "sgd", "momentum": 0.9, "norm": "none", "n_layers": 2, "units": 16,
                    "lr": {"type": "float", "low": 1e6, "high": 1e8}}
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert hps_main(["run", str(config), "--storage", str(tmp_path / "runs")]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("hps: error: ") and "all 2 trials failed" in error and "diverged" in error, error
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
