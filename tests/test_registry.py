"""The champion: logged as a pyfunc on the parent run, registered, aliased; MLflow's global URIs untouched."""

from __future__ import annotations

import mlflow
import numpy as np

from search.registry import CHAMPION, register_champion
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
