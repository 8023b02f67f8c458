"""The champion: logged as a pyfunc on the parent run, registered, aliased; MLflow's global URIs untouched."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from search.review.registry import CHAMPION, register_champion
from tests.conftest import ROOT
from tests.fabricate import record_search, regression_rows, save_regressor, sqlite_uri
from trainables.checkpoint import load_model
from trainables.data import Preprocessor
from trainables.predict import predict_frame


def test_the_champion_is_registered_under_its_alias_and_serves_raw_rows(tmp_path):
    rows, target = regression_rows()
    folder = save_regressor(tmp_path / "model", rows, target, seed=0)
    model, description = load_model(folder)
    prep = Preprocessor.from_dict(description["preprocessor"])
    recorded = record_search(sqlite_uri(tmp_path), "reg", [])
    client = recorded.client
    parent = client.get_run(recorded.parent)
    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()

    assert register_champion(client, recorded.uri, parent, folder, prep, rows, model, "cars") == "models:/cars@champion"
    assert (mlflow.get_tracking_uri(), mlflow.get_registry_uri()) == before
    version = client.get_model_version_by_alias("cars", CHAMPION)
    assert str(version.version) == "1" and version.tags["hps.search"] == "reg"
    assert client.get_run(recorded.parent).info.status == "FINISHED"  # logging on it did not reopen it

    mlflow.set_tracking_uri(recorded.uri)
    try:
        served = mlflow.pyfunc.load_model("models:/cars@champion")
    finally:
        mlflow.set_tracking_uri(None)
    assert served.metadata.get_input_schema() is None and served.metadata.get_output_schema() is not None
    assert np.allclose(served.predict(rows.head(7))["prediction"], predict_frame(model, prep, rows.head(7))["prediction"])
    again = register_champion(client, recorded.uri, parent, folder, prep, rows, model, "cars")
    assert again == "models:/cars@champion" and str(client.get_model_version_by_alias("cars", CHAMPION).version) == "2"


def test_a_champion_registered_by_an_earlier_hps_still_loads_and_predicts(tmp_path):
    # A champion registered on 2026-12-05 (before search/ was laid out in subpackages): its MLmodel names the
    # search/review/serving.py of the machine that made it; it must load from the copy it carries, with the trainables/ it
    # carries, wherever this checkout is and whatever search/ looks like now.
    import tarfile

    data = ROOT / "tests" / "data"
    with tarfile.open(data / "champion-registered-2026-12-05.tar.gz") as archive:
        archive.extractall(tmp_path / "champion", filter="data")
    model = mlflow.pyfunc.load_model(str(tmp_path / "champion"))
    predicted = model.predict(pd.read_csv(data / "champion-2026-12-05-rows.csv"))
    expected = pd.read_csv(data / "champion-2026-12-05-expected.csv")
    assert list(predicted["prediction"]) == list(expected["prediction"])
    probabilities = [c for c in expected.columns if c.startswith("proba_")]
    assert np.allclose(predicted[probabilities].to_numpy(float), expected[probabilities].to_numpy(float), atol=1e-5)
