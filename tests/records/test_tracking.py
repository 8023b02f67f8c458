"""The MLflow records of a search without training or Ray actors: recorded trial results replayed through the trial
logger's hooks (stand-in trials carrying only what the logger reads) into a sqlite tracking store, then the runs,
metrics, tags, uploads, saved state and repairs checked."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient
from ray import tune

from search.records.leaderboard import trial_runs
from search.records.tracking import TrialRunLogger, experiment_id, log_model_artifacts, start_search_run
from tests.fabricate import sqlite_uri


@dataclass
class StandInTrial:
    """What the trial logger reads of a Tune trial."""

    trial_id: str
    path: str
    config: dict = field(default_factory=lambda: {"lr": 0.01, "n_layers": 2})
    status: str = "RUNNING"
    num_failures: int = 0
    last_result: dict = field(default_factory=dict)
    checkpoint: Any = None
    error: str | None = None

    def get_error(self):
        return self.error


def epoch(n: int, val_loss: float, best: tuple[int, float], **extra) -> dict:
    """One recorded report of the trainable."""
    return {"epoch": n, "train_loss": val_loss + 0.1, "val_loss": val_loss, "best_epoch": best[0],
            "best_val_loss": best[1], "epoch_time_s": 0.5, "epoch_end_time": 1_700_000_000 + n,
            "hostname": "node-1", "device": "cpu", "pid": 42, "time_total_s": 3.0 * n, **extra}


# A trial whose second report also carries its first epoch (short epochs are merged), then its last.
CURVE = [epoch(2, 0.6, (2, 0.6), earlier_epochs=[epoch(1, 0.8, (1, 0.8))]), epoch(3, 0.7, (2, 0.6), finished=True)]


@dataclass
class Search:
    uri: str
    client: MlflowClient
    exp_id: str
    parent: str
    root: Path  # the search's experiment folder

    def logger(self, log_models: str = "none") -> TrialRunLogger:
        logger = TrialRunLogger(self.uri, self.exp_id, self.parent, "s", log_models, str(self.root))
        logger.setup()
        return logger

    def trial(self, trial_id: str) -> StandInTrial:
        folder = self.root / f"trial_fn_{trial_id}"
        folder.mkdir(parents=True, exist_ok=True)
        return StandInTrial(trial_id, str(folder))

    def runs(self) -> dict[str, Any]:
        return {r.data.tags["hps.trial_id"]: r for r in trial_runs(self.client, self.client.get_run(self.parent))}

    def history(self, run, key: str = "val_loss") -> dict[int, float]:
        return {m.step: m.value for m in self.client.get_metric_history(run.info.run_id, key)}


@pytest.fixture(scope="module")
def database(tmp_path_factory) -> str:
    return sqlite_uri(tmp_path_factory.mktemp("tracking"))


@pytest.fixture
def search(database, tmp_path, request) -> Search:
    client = MlflowClient(database)
    exp_id = experiment_id(client, request.node.name[:60])
    config = {"search": {"metric": "val_loss", "mode": "min"}, "name": "s"}
    data = {"split_fingerprint": "f00d", "task": "regression"}
    parent = start_search_run(client, exp_id, "s", config, "name: s\n", data)
    return Search(database, client, exp_id, parent, tmp_path / "s")


def run_trial(logger: TrialRunLogger, trial: StandInTrial, reports: list[dict], status: str = "TERMINATED") -> None:
    logger.on_trial_start(0, [trial], trial)
    for report in reports:
        trial.last_result = report
        logger.on_trial_result(0, [trial], trial, report)
    trial.status = status


def finish(logger: TrialRunLogger) -> None:
    assert logger.writer.drain(30)
    assert logger.writer.given_up == []


def test_the_parent_run_holds_the_config_and_the_split(search):
    parent = search.client.get_run(search.parent)
    assert parent.data.tags["hps.role"] == "search" and parent.data.tags["hps.split_fingerprint"] == "f00d"
    assert parent.data.params["search.metric"] == "val_loss" and parent.data.params["data.task"] == "regression"
    assert search.client.list_artifacts(search.parent)[0].path == "config.yaml"


def test_a_completed_trial_is_one_nested_run_with_every_epoch(search):
    logger = search.logger()
    trial = search.trial("a")
    run_trial(logger, trial, CURVE)
    logger.on_trial_complete(0, [trial], trial)
    finish(logger)
    (run,) = search.runs().values()
    assert run.data.tags["mlflow.parentRunId"] == search.parent and run.info.status == "FINISHED"
    assert run.data.tags["hps.outcome"] == "completed" and run.data.tags["hps.last_epoch"] == "3"
    assert run.data.tags["hps.outcome_note"] == "completed 3 epochs"
    assert run.data.tags["hostname"] == "node-1" and run.data.tags["device"] == "cpu"
    assert run.data.params == {"lr": "0.01", "n_layers": "2"}
    assert search.history(run) == {1: 0.8, 2: 0.6, 3: 0.7}
    assert search.history(run, "epoch_time_s") == {1: 0.5, 2: 0.5, 3: 0.5}
    assert "time_total_s" not in run.data.metrics  # Tune's bookkeeping is not a metric
    assert run.data.metrics["best_epoch_val_loss"] == 0.6 and run.data.metrics["best_epoch_train_loss"] == 0.7
    assert logger.to_prune == {trial.path: ("a", True, False)}  # its newest checkpoint kept for the end


def test_stopped_diverged_and_errored_trials_end_with_their_outcome(search):
    logger = search.logger()
    stopped, diverged, errored = search.trial("stopped"), search.trial("diverged"), search.trial("errored")
    run_trial(logger, stopped, CURVE[:1])
    logger.on_trial_complete(0, [stopped], stopped)
    run_trial(logger, diverged, [epoch(1, float("nan"), (1, 0.9), diverged="val_loss is nan")])
    logger.on_trial_complete(0, [diverged], diverged)
    run_trial(logger, errored, CURVE[:1], status="ERROR")
    logger.on_trial_recover(0, [errored], errored)
    errored.num_failures, errored.error = 2, "Traceback ...\nRuntimeError: out of memory"
    logger.on_trial_error(0, [errored], errored)
    finish(logger)
    runs = search.runs()
    assert runs["stopped"].data.tags["hps.outcome"] == "stopped_early" and runs["stopped"].info.status == "FINISHED"
    assert runs["stopped"].data.tags["hps.outcome_note"] == "stopped early at epoch 2"
    assert runs["diverged"].data.tags["hps.outcome"] == "failed" and runs["diverged"].info.status == "FAILED"
    assert "val_loss" not in runs["diverged"].data.metrics  # NaN is not logged
    assert runs["errored"].data.tags["hps.outcome_note"] == (
        "failed at epoch 2 after 2 attempt(s): RuntimeError: out of memory")
    assert runs["errored"].info.status == "FAILED"
    assert search.client.list_artifacts(runs["errored"].info.run_id)[0].path == "error.txt"


def test_an_interrupted_experiment_leaves_no_run_running(search):
    logger = search.logger()
    done, running, never_reported = search.trial("done"), search.trial("running"), search.trial("never")
    run_trial(logger, done, CURVE)
    logger.on_trial_complete(0, [done], done)
    run_trial(logger, running, CURVE[:1])
    logger.on_trial_start(0, [never_reported], never_reported)
    logger.on_trial_complete(0, [never_reported], never_reported)  # Tune winding down on Ctrl-C: stays open
    logger.on_experiment_end([done, running, never_reported])
    finish(logger)
    assert sorted(logger.unfinished) == ["never", "running"]
    runs = search.runs()
    assert {k: (r.data.tags["hps.outcome"], r.info.status) for k, r in runs.items()} == {
        "done": ("completed", "FINISHED"), "running": ("interrupted", "KILLED"), "never": ("interrupted", "KILLED")}


def model_checkpoint(trial: StandInTrial) -> tune.Checkpoint:
    folder = Path(trial.path) / "checkpoint_000001" / "model"
    folder.mkdir(parents=True)
    (folder / "model.json").write_text(json.dumps({"n_layers": 2}))
    (folder / "weights.pt").write_bytes(b"weights")
    return tune.Checkpoint.from_directory(str(folder.parent))


def test_with_log_models_all_each_ended_trials_model_is_uploaded_from_its_checkpoint(search):
    logger = search.logger(log_models="all")
    trial = search.trial("a")
    trial.checkpoint = model_checkpoint(trial)
    run_trial(logger, trial, CURVE)
    logger.on_trial_complete(0, [trial], trial)
    (op,) = [op for op in logger.writer.pending() if op.kind == "log_artifacts"]
    assert op.args["local_dir"] == "trial_fn_a/checkpoint_000001/model"  # relative: the storage folder may move
    finish(logger)
    run = search.runs()["a"]
    assert run.data.tags["hps.model"] == "model"
    assert {a.path for a in search.client.list_artifacts(run.info.run_id, "model")} == {
        "model/model.json", "model/weights.pt"}
    assert logger.models_not_uploaded() == set()
    assert logger.to_prune == {trial.path: ("a", False, True)}  # uploaded: every checkpoint may go


def test_the_best_model_is_uploaded_through_the_same_path(search):
    trial = search.trial("best")
    run_id = search.client.create_run(search.exp_id).info.run_id
    assert log_model_artifacts(search.client, run_id, None) is False
    empty = Path(trial.path) / "checkpoint_000000"
    empty.mkdir()
    assert log_model_artifacts(search.client, run_id, tune.Checkpoint.from_directory(str(empty))) is False
    assert log_model_artifacts(search.client, run_id, model_checkpoint(trial)) is True
    assert {a.path for a in search.client.list_artifacts(run_id, "model")} == {"model/model.json", "model/weights.pt"}


def test_a_restored_logger_continues_the_same_runs_and_logs_only_missing_epochs(search):
    first = search.logger()
    trial = search.trial("a")
    run_trial(first, trial, CURVE[:1])
    finish(first)
    state = first.get_state()  # what Tune saves with the experiment snapshot

    restored = TrialRunLogger(search.uri, search.exp_id, search.parent, "s", "none", str(search.root))
    restored.set_state(state)
    # Resumed from an older checkpoint: epoch 2 is reported again, then the rest.
    run_trial(restored, trial, [epoch(2, 0.6, (2, 0.6)), *CURVE[1:]])
    restored.on_trial_complete(0, [trial], trial)
    finish(restored)
    (run,) = search.runs().values()
    assert run.info.run_id == state["runs"]["a"] and run.data.tags["hps.outcome"] == "completed"
    assert [m.step for m in search.client.get_metric_history(run.info.run_id, "val_loss")] == [1, 2, 3]


def test_reconcile_rebuilds_the_runs_of_ended_trials_from_their_results(search):
    """A driver killed with writes still queued: Tune's state says the trials ended, MLflow lacks what was lost."""
    lost, unfinished = search.trial("lost"), search.trial("open")
    half = search.logger()
    run_trial(half, unfinished, CURVE[:1], status="TERMINATED")  # its run exists, with epochs 1-2, still RUNNING
    finish(half)
    lost.status = "TERMINATED"
    for trial in (lost, unfinished):  # what Tune's experiment state and the trials' result.json hold
        (Path(trial.path) / "result.json").write_text("".join(json.dumps(r) + "\n" for r in CURVE))
        trial.last_result = CURVE[-1]

    logger = search.logger()  # the resumed driver's logger never saw these trials
    assert logger.reconcile([lost, unfinished], check_histories=True) == 2
    finish(logger)
    runs = search.runs()
    for key in ("lost", "open"):
        assert runs[key].data.tags["hps.outcome"] == "completed" and runs[key].info.status == "FINISHED"
        assert [m.step for m in search.client.get_metric_history(runs[key].info.run_id, "val_loss")] == [1, 2, 3]
    assert logger.reconcile([lost, unfinished], check_histories=True) == 0  # consistent now
