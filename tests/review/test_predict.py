"""`hps predict` without a server or a search: which model a reference names, unusable files refused before any
model is fetched, the output written whole. (A damaged server copy: tests/review/test_predict_model_choice.py.)"""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest

from search.errors import ModelNotFound
from search.review.evaluate import EVALUATED_MODEL
from search.review.predict import _write_whole, predict_file
from tests.fabricate import Trial, predictions_of, record_search, regression_rows, save_regressor, sqlite_uri
from trainables.data import DataError


@pytest.fixture
def search(tmp_path):
    """A search whose best trial's model (seed 1) differs from the other trial's (seed 2); rows to predict."""
    rows, target = regression_rows()
    rows.to_csv(tmp_path / "rows.csv", index=False)
    recorded = record_search(sqlite_uri(tmp_path), "pred", [Trial("best", [0.1], {}), Trial("other", [0.2], {})])
    for seed, trial in ((1, "best"), (2, "other")):
        folder = save_regressor(tmp_path / trial, rows, target, seed)
        recorded.client.log_artifacts(recorded.trials[trial], str(folder), "model")
    recorded.client.set_tag(recorded.parent, "hps.best_run_id", recorded.trials["best"])
    return recorded, rows, tmp_path


def predict(recorded, reference: str, tmp_path) -> np.ndarray:
    out = tmp_path / "out.csv"
    assert predict_file(recorded.uri, reference, str(tmp_path / "rows.csv"), str(out)) == 40
    return pd.read_csv(out)["prediction"].to_numpy()


def test_a_search_name_means_its_best_trial_until_evaluated_then_the_tested_model(search):
    recorded, rows, tmp_path = search
    assert np.allclose(predict(recorded, "pred", tmp_path), predictions_of(tmp_path / "best", rows))
    recorded.client.set_tag(recorded.parent, "hps.test_evaluated_at", "2026-11-30T00:00:00+00:00")
    recorded.client.log_artifacts(recorded.parent, str(tmp_path / "other"), EVALUATED_MODEL)
    assert np.allclose(predict(recorded, "pred", tmp_path), predictions_of(tmp_path / "other", rows))


def test_a_runs_uri_resolves_against_the_given_store_and_leaves_mlflow_pointed_where_it_was(search):
    recorded, rows, tmp_path = search
    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    run_id = recorded.trials["other"]
    assert np.allclose(predict(recorded, f"runs:/{run_id}/model", tmp_path), predictions_of(tmp_path / "other", rows))
    assert (mlflow.get_tracking_uri(), mlflow.get_registry_uri()) == before
    with pytest.raises(ModelNotFound, match="models:/nothing@champion"):
        predict(recorded, "models:/nothing@champion", tmp_path)


def test_an_evaluated_search_without_its_tested_model_is_an_error_not_another_model(search):
    recorded, _, tmp_path = search
    for key, value in {"hps.test_evaluated_at": "2026-11-30", "hps.test_run_id": recorded.trials["best"],
                       "hps.test_refit": "True", "hps.test_selection": "best, retrained"}.items():
        recorded.client.set_tag(recorded.parent, key, value)
    with pytest.raises(ModelNotFound, match="evaluate again with --force"):
        predict(recorded, "pred", tmp_path)


def test_unusable_files_are_refused_before_the_store_is_opened(tmp_path):
    missing_store = f"sqlite:///{tmp_path / 'none.db'}"  # opening it would be a TrackingError
    (tmp_path / "header.csv").write_text("x1,x2\n")
    (tmp_path / "empty.csv").write_text("")
    cases = {("absent.csv", "out.csv"): "does not exist", ("header.csv", "no/out.csv"): "no' does not exist",
             ("header.csv", "out.csv"): "no rows to predict", ("empty.csv", "out.csv"): "cannot read"}
    for (given, output), message in cases.items():
        with pytest.raises(DataError, match=message):
            predict_file(missing_store, "pred", str(tmp_path / given), str(tmp_path / output))
    assert not (tmp_path / "none.db").exists()


def test_an_interrupted_write_leaves_no_file_to_be_taken_for_results(tmp_path, monkeypatch):
    path = tmp_path / "out.csv"

    def interrupted(self, target, **kwargs):
        open(target, "w").write("prediction\n1.0\n")  # a first part reached the disk
        raise KeyboardInterrupt

    monkeypatch.setattr(pd.DataFrame, "to_csv", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _write_whole(pd.DataFrame({"prediction": [1.0, 2.0]}), path)
    assert list(tmp_path.iterdir()) == []
