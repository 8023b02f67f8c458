"""Every reference config in configs/ works: it validates, its data loads and splits, and a trial sampled from its
space trains on it for its task and metric (2 epochs, no Ray). One config also runs end to end as a real tiny search
(2 trials, 2 epochs, real Ray and MLflow); the others run as real searches throughout the suite."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from search.config.dataset import split_from_config
from search.config.network import check_network
from search.config.schema import parse_config, with_absolute_builder
from search.config.space import define_by_run
from search.run.ray_setup import asha_rungs
from search.run.tuner import run_search
from tests.conftest import CONFIGS, shrink
from tests.stores import sqlite_store
from tests.tables import write_idx
from trainables.checkpoint import load_checkpoint, save_checkpoint
from trainables.train import TrainSettings, train_trial

CONFIG_PATHS = sorted(CONFIGS.glob("*.yaml"))
# The real end-to-end search: the config with the most of its own machinery (a CSV file, a dropped identifier column,
# imputation and 5-fold cross-validation) — the others' sources and tasks run as real searches in other tests.
END_TO_END = "auto_mpg"


def tiny_config(path, tmp_path, uri: str = "sqlite:///mlruns.db"):
    """The config shrunk to a tiny budget (the MNIST files, not shipped, replaced by tiny IDX files)."""
    raw = yaml.safe_load(path.read_text())
    if raw["data"]["source"].startswith("idx:"):
        raw["data"]["source"] = f"idx:{write_idx(tmp_path / 'idx', n_train=100, n_test=20, side=28)}"
    # A network builder is found beside the config, as `hps run CONFIG` finds it.
    return with_absolute_builder(parse_config(shrink(raw, f"tiny-{path.stem}", uri, num_samples=2, max_epochs=2)),
                                 path.parent)


def sampled_params(cfg, seed: int) -> dict:
    """One configuration drawn from the config's space as a search draws it (Optuna, define-by-run, constants)."""
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed)).ask()
    constants = define_by_run(cfg.space)(trial)
    return {**trial.params, **constants}


@pytest.mark.slow  # seconds of training per config (5 folds for auto_mpg)
@pytest.mark.parametrize("path", CONFIG_PATHS, ids=lambda p: p.stem)
def test_reference_config_trains_a_trial(path, tmp_path):
    cfg = tiny_config(path, tmp_path)
    split = split_from_config(cfg)
    folds = split.trial_folds()
    assert len(folds) == (cfg.data.split.folds or 1)
    for fold in folds:
        assert len(fold.x_train) and len(fold.x_val) and fold.x_train.shape[1] == fold.x_val.shape[1]
        assert fold.task == split.task
    if cfg.data.task != "auto":
        assert split.task == cfg.data.task
    assert split.task in ("binary", "multiclass", "regression")

    metric = cfg.search.metric
    for seed in (0, 1):  # two trials, as the tiny search had
        params = sampled_params(cfg, seed)
        settings = TrainSettings(max_epochs=2, metric=metric, seed=cfg.training_seed,
                                 checkpoint_every=cfg.training.checkpoint_every,
                                 decision_epochs=asha_rungs(cfg) if cfg.scheduler.type == "asha" else frozenset(),
                                 network=code.to_dict() if (code := check_network(cfg, split)) else None)
        reports = []
        train_trial(params, folds if len(folds) > 1 else folds[0], settings, lambda m, s: reports.append((m, s)))
        assert [m["epoch"] for m, _ in reports] == [1, 2], (params, [m for m, _ in reports])
        last, snapshot = reports[-1]
        assert "diverged" not in last and last["finished"]
        assert math.isfinite(last[metric]) and math.isfinite(last[f"best_{metric}"]), last
        assert np.isfinite(last["train_loss"])
        # The last epoch always carries a checkpoint, which is what a logged model is made from.
        assert snapshot is not None
        save_checkpoint(tmp_path / f"ckpt-{seed}", snapshot.state, snapshot.description)
        assert load_checkpoint(tmp_path / f"ckpt-{seed}")["epoch"] == 2


@pytest.mark.slow
def test_a_reference_config_runs_as_a_search(ray_session, tmp_path):
    path = CONFIGS / f"{END_TO_END}.yaml"
    cfg = tiny_config(path, tmp_path, sqlite_store(tmp_path / "mlruns.db"))
    outcome = run_search(cfg, storage=str(tmp_path / "runs"))
    assert len(outcome.leaderboard) == 2
    assert set(outcome.leaderboard["status"]) == {"FINISHED"}
    metric = f"best_{cfg.search.metric}"
    assert outcome.leaderboard[metric].notna().all()
    assert MlflowClient(cfg.tracking.uri).get_run(outcome.parent_run_id).info.status == "FINISHED"
