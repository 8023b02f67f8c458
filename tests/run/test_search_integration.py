"""End to end against a real `mlflow server` process and a real local Ray: a small ASHA search on digits."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from search.config.schema import parse_config
from search.errors import SearchExists, TrackingError
from search.records.leaderboard import find_search_run, leaderboard, trial_runs
from search.run.tuner import run_search
from tests.conftest import load_yaml, shrink
from trainables.checkpoint import load_model
from trainables.data import split_dataset

pytestmark = pytest.mark.slow
NUM_SAMPLES, MAX_EPOCHS = 8, 6


def digits_config(name: str, mlflow_server: str):
    """The module's search: ASHA, one trial at a time (so it also repeats exactly, see below)."""
    raw = shrink(load_yaml("digits.yaml"), name, mlflow_server, num_samples=NUM_SAMPLES, max_epochs=MAX_EPOCHS)
    raw["scheduler"].update(grace_period=1, reduction_factor=2)
    return parse_config(raw)


@pytest.fixture(scope="module")
def search(ray_session, mlflow_server, tmp_path_factory):
    cfg = digits_config("it-digits", mlflow_server)
    storage = tmp_path_factory.mktemp("storage")
    outcome = run_search(cfg, storage=str(storage))
    client = MlflowClient(mlflow_server)
    parent = client.get_run(outcome.parent_run_id)
    return cfg, outcome, client, parent, trial_runs(client, parent), storage


def test_parent_run_records_the_search(search):
    cfg, outcome, client, parent, children, _ = search
    assert parent.info.status == "FINISHED"
    assert parent.data.params["search.sampler"] == "tpe"
    assert parent.data.params["scheduler.type"] == "asha"
    assert "'type': 'float'" in parent.data.params["space.lr"]
    split = split_dataset(cfg.data.source, cfg.data.task, 0.15, 0.15, 0)
    assert parent.data.tags["hps.split_fingerprint"] == split.fingerprint
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"config.yaml", "leaderboard.csv"} <= artifacts
    assert "report" not in artifacts  # tracking.review_plots: false (tests/conftest.py's shrink)
    assert parent.data.tags["hps.n_trials"] == str(NUM_SAMPLES)


def test_one_nested_child_run_per_trial_none_running(search):
    _, _, _, parent, children, _ = search
    assert len(children) == NUM_SAMPLES
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert all(c.info.status == "FINISHED" for c in children)
    assert len({c.data.tags["hps.trial_id"] for c in children}) == NUM_SAMPLES


def test_trial_params_use_config_names_and_placement_tags(search):
    _, _, _, _, children, _ = search
    for child in children:
        params = child.data.params
        assert {"lr", "weight_decay", "dropout", "n_layers", "activation", "norm", "optimizer", "batch_size"} <= set(params)
        assert {f"units_{i}" for i in range(int(params["n_layers"]))} <= set(params)
        assert ("momentum" in params) == (params["optimizer"] == "sgd")
        assert child.data.tags["device"] == "cpu"
        assert child.data.tags["node_id"] and child.data.tags["hostname"] == socket.gethostname()


def test_metric_histories_have_one_point_per_epoch(search):
    _, _, client, _, children, _ = search
    for child in children:
        last_epoch = int(child.data.tags["hps.last_epoch"])
        for name in ("train_loss", "val_loss", "val_accuracy", "val_f1"):
            history = client.get_metric_history(child.info.run_id, name)
            assert sorted(m.step for m in history) == list(range(1, last_epoch + 1)), name


def test_asha_stopped_some_trials_and_outcomes_are_tagged(search):
    _, _, _, _, children, _ = search
    outcomes = {c.data.tags["hps.outcome"] for c in children}
    assert "stopped_early" in outcomes and "completed" in outcomes
    for child in children:
        last = int(child.data.tags["hps.last_epoch"])
        if child.data.tags["hps.outcome"] == "completed":
            assert last == MAX_EPOCHS
        else:
            assert last < MAX_EPOCHS and f"stopped early at epoch {last}" == child.data.tags["hps.outcome_note"]


def test_every_trial_has_a_rebuildable_best_epoch_model(search, tmp_path):
    cfg, _, client, _, children, _ = search
    split = split_dataset(cfg.data.source, cfg.data.task, 0.15, 0.15, 0)
    data = split.trial_data()
    for child in children:
        assert {a.path for a in client.list_artifacts(child.info.run_id, "model")} == {"model/weights.pt", "model/model.json"}
        # every trial's model is the one of its recorded best epoch, those ASHA stopped at a rung included
        described = client.download_artifacts(child.info.run_id, "model/model.json", str(tmp_path / child.info.run_id))
        assert json.loads(Path(described).read_text())["epoch"] == int(child.data.metrics["best_epoch"]), \
            child.data.tags["hps.outcome_note"]
    best = next(c for c in children if c.data.tags.get("hps.best") == "true")
    local = client.download_artifacts(best.info.run_id, "model", str(tmp_path))
    model, description = load_model(local)
    assert description["epoch"] == int(best.data.metrics["best_epoch"])
    with torch.inference_mode():
        accuracy = (model(torch.tensor(data.x_val)).argmax(1).numpy() == data.y_val).mean()
    assert accuracy == pytest.approx(best.data.metrics["best_epoch_val_accuracy"], abs=1e-6)


def test_leaderboard_is_best_first_and_matches_parent_tags(search):
    _, outcome, client, parent, _, _ = search
    board = leaderboard(client, find_search_run(client, "it-digits"))
    assert len(board) == NUM_SAMPLES
    values = board["best_val_loss"].tolist()
    assert values == sorted(values)
    assert board.iloc[0]["run_id"] == parent.data.tags["hps.best_run_id"]
    assert outcome.leaderboard["run_id"].tolist() == board["run_id"].tolist()


def test_same_name_in_same_storage_is_refused(search):
    cfg, _, _, _, _, storage = search
    with pytest.raises(SearchExists, match="--overwrite"):
        run_search(cfg, storage=str(storage))


def test_unreachable_tracking_server_fails_fast(ray_session, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    raw = shrink(load_yaml("wine.yaml"), "unreachable", f"http://127.0.0.1:{port}")
    start = time.monotonic()
    with pytest.raises(TrackingError, match="unreachable"):
        run_search(parse_config(raw), storage=str(tmp_path))
    assert time.monotonic() - start < 10
    assert not (tmp_path / "unreachable").exists()


def test_checkpoints_of_ended_trials_are_pruned(search):
    """log_models: all — once a trial's model is in MLflow its checkpoints are deleted (bounded disk use)."""
    *_, storage = search
    trial_dirs = [d for d in (storage / "it-digits").iterdir() if d.is_dir() and not d.name.startswith(".")]
    assert len(trial_dirs) == NUM_SAMPLES
    assert not list((storage / "it-digits").glob("*/checkpoint_*"))


def test_patience_stops_trials_with_their_own_outcome_and_they_stay_evaluable(ray_session, mlflow_server, tmp_path):
    """scheduler.patience end to end: a trial whose val_loss stops improving ends itself, is recorded as
    stopped_no_improvement with its best epoch's model, and `hps evaluate` refits it for that many epochs."""
    from search.review.evaluate import evaluate_search

    raw = shrink(load_yaml("wine.yaml"), "it-patience", mlflow_server, num_samples=2, max_epochs=5)
    # A learning rate far below float32's resolution of the weights: no epoch after the first changes val_loss, so a
    # patience of 1 must end every trial at epoch 2 (FIFO: nothing else stops a trial).
    raw["space"].update(lr=1e-12, norm="none", dropout=0.0, weight_decay=0.0)
    raw["scheduler"].update(type="fifo", patience=1)
    raw["evaluate"] = {"top_k": 1, "refit": True}
    outcome = run_search(parse_config(raw), storage=str(tmp_path / "runs"))
    client = MlflowClient(mlflow_server)
    parent = client.get_run(outcome.parent_run_id)
    children = trial_runs(client, parent)
    assert len(children) == 2
    for child in children:
        tags = child.data.tags
        assert tags["hps.outcome"] == "stopped_no_improvement", tags.get("hps.outcome_note")
        assert tags["hps.outcome_note"] == "stopped at epoch 2: no improvement of val_loss in 1 epoch (best at epoch 1)"
        assert tags["hps.last_epoch"] == "2" and child.info.status == "FINISHED"
        assert "model" in {a.path for a in client.list_artifacts(child.info.run_id)}
    assert parent.data.tags["hps.n_stopped_no_improvement"] == "2"
    evaluation = evaluate_search(mlflow_server, "it-patience")
    assert evaluation.epoch == 1 and evaluation.refit and evaluation.metrics


def _trials_in_order(outcome, mlflow_server) -> tuple[list[dict], dict, float]:
    """A finished search's trial parameters in the order its trials started, its best trial's parameters and value."""
    client = MlflowClient(mlflow_server)
    # Tune's trial ids are random; trials start (and their runs are created) in the order they were suggested,
    # though two started together may be recorded in either order.
    children = sorted(trial_runs(client, client.get_run(outcome.parent_run_id)), key=lambda c: c.info.start_time)
    best = outcome.leaderboard.iloc[0]
    by_trial = {c.data.tags["hps.trial_id"]: c.data.params for c in children}
    return [c.data.params for c in children], by_trial[best["trial"]], float(best["best_val_loss"])


def test_one_trial_at_a_time_gives_the_same_search_twice(search, mlflow_server, tmp_path):
    """What a seed fixes (docs/config.md, Reproducibility): one trial at a time (ASHA here) gives the same trials in
    the same order and the same best trial. The module's search is the first run."""
    _, outcome, *_ = search
    again = run_search(digits_config("it-digits-again", mlflow_server), storage=str(tmp_path / "runs"))
    (first, best_first, value_first), (second, best_second, value_second) = (
        _trials_in_order(outcome, mlflow_server), _trials_in_order(again, mlflow_server))
    assert len(first) == NUM_SAMPLES and first == second
    assert best_first == best_second and value_first == value_second


FIFO_NAMES = ("it-repeat-fifo-0", "it-repeat-fifo-1")  # the FIFO search's two runs


@pytest.fixture(scope="module")
def fifo_twice(ray_session, mlflow_server, tmp_path_factory):
    """The same FIFO search twice, 2 trials at a time with search.tell_in_order, keeping no models: each run's
    trials in start order, best trial and value (:func:`_trials_in_order`)."""
    storage = tmp_path_factory.mktemp("fifo")
    runs = []
    for name in FIFO_NAMES:
        raw = shrink(load_yaml("wine.yaml"), name, mlflow_server, num_samples=4, max_epochs=3, max_concurrent=2)
        raw["search"]["tell_in_order"] = True
        raw["scheduler"]["type"] = "fifo"
        raw["tracking"]["log_models"] = "none"
        runs.append(_trials_in_order(run_search(parse_config(raw), storage=str(storage)), mlflow_server))
    return runs


def test_fifo_with_ordered_telling_gives_the_same_search_twice(fifo_twice):
    """FIFO with search.tell_in_order and 2 trials at a time: the same trials and the same best trial twice. (With 4
    trials TPE is still in its random startup phase, so this mostly checks that ordered telling runs under Tune; its
    logic is checked in tests/run/test_searcher.py.)"""
    (first, best_first, value_first), (second, best_second, value_second) = fifo_twice
    assert len(first) == 4 and sorted(map(str, first)) == sorted(map(str, second))
    assert best_first == best_second and value_first == value_second


def test_a_search_that_kept_no_models_says_so(fifo_twice, mlflow_server, tmp_path, capsys):
    """tracking.log_models: none (the FIFO search above): `hps predict` and `hps evaluate` refuse with the reason,
    and write nothing."""
    from sklearn.datasets import load_wine

    from search.cli import main

    load_wine(as_frame=True).data.head(3).to_csv(tmp_path / "rows.csv", index=False)
    name = FIFO_NAMES[0]
    assert main(["predict", name, str(tmp_path / "rows.csv"), "-o", str(tmp_path / "out.csv"),
                 "--tracking-uri", mlflow_server]) == 2
    assert "its best trial has no model artifact (was tracking.log_models none?)" in capsys.readouterr().err
    assert main(["evaluate", name, "--tracking-uri", mlflow_server]) == 2
    assert "has no model artifact" in capsys.readouterr().err
    assert main(["evaluate", name, "--top-k", "3", "--tracking-uri", mlflow_server]) == 2
    assert "--top-k: 3 averages the 3 best trials' models, which only tracking.log_models: all keeps (this search: " \
           "none)" in capsys.readouterr().err
    assert not (tmp_path / "out.csv").exists()
