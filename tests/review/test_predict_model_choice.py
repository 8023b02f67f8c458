"""`hps predict NAME` predicts with the model `hps evaluate` tested, or fails in one line; it never falls back to
another model (the best trial's raw model in place of a refit or an ensemble) when that copy cannot be fetched.

The session's real `mlflow server` with proxied artifacts; the search's runs are laid out as `hps run` +
`hps evaluate` leave them (a trial's raw model, the tested model on the parent run), and the server's stored copy
is damaged or removed on disk.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from search.cli import main
from tests.conftest import MlflowServer
from tests.fabricate import predictions_of, save_regressor

pytestmark = pytest.mark.slow


@pytest.fixture
def evaluated_search(mlflow_control, tmp_path, monkeypatch, request):
    """A search whose best trial's raw model (A) differs from the model `hps evaluate` tested (B, e.g. a refit), on
    the session's server, whose artifact folder the tests reach: each test damages only the stored copy of its own
    search (an experiment of its own), which no other test reads."""
    server = mlflow_control
    # The damaged copy makes the server answer 500, which MLflow's client retries for minutes by default.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    name = f"chosen-{len(request.node.name)}-{time.time_ns()}"
    rng = np.random.default_rng(0)
    rows = pd.DataFrame({"x1": rng.normal(size=40), "x2": rng.normal(size=40)})
    target = pd.Series(rows["x1"] * 2 + rows["x2"], name="y")
    rows.to_csv(tmp_path / "rows.csv", index=False)
    raw_model = save_regressor(tmp_path / "a", rows, target, seed=1)
    tested_model = save_regressor(tmp_path / "b", rows, target, seed=2)
    client = MlflowClient(server.uri)
    experiment = client.create_experiment(name)
    trial = client.create_run(experiment, tags={"hps.search": name, "hps.role": "trial"}).info.run_id
    client.log_artifacts(trial, str(raw_model), "model")
    parent = client.create_run(experiment, tags={
        "hps.search": name, "hps.role": "search", "hps.best_run_id": trial,
        "hps.test_evaluated_at": "2026-11-30T00:00:00+00:00", "hps.test_run_id": trial, "hps.test_top_k": "1",
        "hps.test_refit": "True", "hps.test_selection": "t1: val_mae 0.5 at epoch 1, retrained"}).info.run_id
    client.log_artifacts(parent, str(tested_model), "evaluated_model")
    stored = next((server.root / "art").rglob(f"{parent}/artifacts/evaluated_model"))
    return Search(name, server, client, parent, stored, predictions_of(raw_model, rows),
                  predictions_of(tested_model, rows))


@dataclass
class Search:
    name: str
    server: MlflowServer
    client: MlflowClient
    parent: str
    stored: Path  # the server's copy of the tested model, on its disk
    raw: np.ndarray  # predictions of the best trial's raw model
    tested: np.ndarray  # predictions of the model `hps evaluate` tested


def predict(search: Search, tmp_path: Path) -> int:
    return main(["predict", search.name, str(tmp_path / "rows.csv"), "-o", str(tmp_path / "out.csv"),
                 "--tracking-uri", search.server.uri])


def test_predict_uses_the_tested_model(evaluated_search, tmp_path):
    search = evaluated_search
    assert not np.allclose(search.raw, search.tested)
    assert predict(search, tmp_path) == 0
    assert np.allclose(pd.read_csv(tmp_path / "out.csv")["prediction"], search.tested, atol=1e-5)


def test_an_error_fetching_the_tested_model_is_a_one_line_error_not_another_model(evaluated_search, tmp_path, capsys):
    search = evaluated_search
    # The server's copy is damaged (a file of it points nowhere): fetching it fails on the server.
    (search.stored / "weights.pt").unlink()
    os.symlink(search.stored / "gone.pt", search.stored / "weights.pt")
    assert predict(search, tmp_path) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"hps: error: search '{search.name}': could not fetch the model "
                                                   f"`hps evaluate` tested (evaluated_model on run {search.parent})"), err
    assert not (tmp_path / "out.csv").exists()


def test_a_tested_model_missing_from_the_parent_is_an_error_unless_it_is_exactly_the_trials(evaluated_search,
                                                                                           tmp_path, capsys):
    search = evaluated_search
    shutil.rmtree(search.stored)
    assert predict(search, tmp_path) == 2  # a refit was tested: the trial's raw model is not it
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the model `hps evaluate` tested (t1: val_mae 0.5 at epoch 1, retrained) is not " \
                                    f"on run {search.parent}; evaluate again with --force" in err, err
    assert not (tmp_path / "out.csv").exists()

    # A single trial evaluated as trained (an evaluation older than the parent's copy): the trial's model is it.
    search.client.set_tag(search.parent, "hps.test_refit", "False")
    assert predict(search, tmp_path) == 0
    assert np.allclose(pd.read_csv(tmp_path / "out.csv")["prediction"], search.raw, atol=1e-5)
