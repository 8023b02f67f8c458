"""A search of the user's own network end to end, on a real local Ray and a real `mlflow server`: the builder file
beside the config, trials that record its code with their weights, `hps evaluate` (top 2, retrained), and then, with
the user's folder gone, `hps predict` and MLflow's scoring server answering from another working directory."""

from __future__ import annotations

import json
import shutil
import sys

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests
import yaml
from mlflow.tracking import MlflowClient
from sklearn.datasets import load_digits

from search.cli import main
from search.records.connection import fluent_uris
from search.records.leaderboard import find_search_run
from search.records.logged_models import LOGGED_MODEL_TAG
from tests.conftest import CONFIGS
from tests.serving import scoring_server

pytestmark = pytest.mark.slow


def test_a_users_cnn_searches_evaluates_and_serves_without_its_folder(ray_session, mlflow_server, tmp_path,
                                                                       monkeypatch):
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    (project / "nets").mkdir(parents=True)
    elsewhere.mkdir()
    shutil.copy(CONFIGS / "networks" / "digits_cnn.py", project / "nets" / "cnn.py")
    config = yaml.safe_load((CONFIGS / "digits_cnn.yaml").read_text())
    config.update(name="own-cnn", evaluate={"top_k": 2, "refit": True},
                  tracking={"uri": mlflow_server, "log_models": "all", "review_plots": False})
    config["model"]["builder"] = "nets/cnn.py:DigitsCNN"  # beside the config, wherever hps runs from
    config["space"].update(channels={"type": "categorical", "choices": [4, 8]}, kernel_size=3, batch_size=64)
    config["search"].update(num_samples=3, max_concurrent=1)
    config["scheduler"].update(max_epochs=3, grace_period=1)
    (project / "search.yaml").write_text(yaml.safe_dump(config))

    monkeypatch.chdir(elsewhere)
    address = ray_session.get_runtime_context().gcs_address
    assert main(["run", str(project / "search.yaml"), "--address", address, "--storage", str(tmp_path / "runs")]) == 0

    client = MlflowClient(mlflow_server)
    parent = find_search_run(client, "own-cnn")
    children = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(children) == 3 and {r.info.status for r in children} == {"FINISHED"}
    for child in children:
        folder = client.download_artifacts(child.info.run_id, "model", str(tmp_path / child.info.run_id))
        description = json.loads(open(f"{folder}/model.json").read())
        network = description["architecture"]["network"]
        assert network["builder"] == f"{project / 'nets' / 'cnn.py'}:DigitsCNN"
        assert description["architecture"]["arguments"] == {k: description["params"][k]
                                                            for k in ("channels", "kernel_size", "dropout")}
        assert open(f"{folder}/code/cnn.py").read() == (CONFIGS / "networks" / "digits_cnn.py").read_text()
        assert int(child.data.metrics["n_params"]) > 0

    assert main(["evaluate", "own-cnn", "--tracking-uri", mlflow_server]) == 0
    assert float(client.get_run(parent.info.run_id).data.metrics["test_accuracy"]) > 0.5

    # The user's folder is gone, and this process forgets the code it ran: what loads now comes from MLflow.
    shutil.rmtree(project)
    for name in [m for m in sys.modules if m.startswith("hps_network_")]:
        monkeypatch.delitem(sys.modules, name)
    rows = load_digits(as_frame=True).data.head(6)
    rows.to_csv(elsewhere / "rows.csv", index=False)
    assert main(["predict", "own-cnn", "rows.csv", "-o", "out.csv", "--tracking-uri", mlflow_server]) == 0
    by_hps = pd.read_csv(elsewhere / "out.csv")
    assert len(by_hps) == 6 and set(by_hps["prediction"]) <= set(range(10))

    # Every trial's LoggedModel carries its network's code the same way: any one loads and predicts.
    with fluent_uris(mlflow_server):
        trial_model = mlflow.pyfunc.load_model(f"models:/{children[0].data.tags[LOGGED_MODEL_TAG]}")
    assert len(trial_model.predict(rows)) == 6

    with scoring_server("models:/own-cnn@champion", mlflow_server, tmp_path, cwd=elsewhere) as url:
        answer = requests.post(f"{url}/invocations", data=(elsewhere / "rows.csv").read_text(),
                               headers={"Content-Type": "text/csv"}, timeout=60)
    assert answer.status_code == 200, answer.text[:500]
    served = pd.DataFrame(answer.json()["predictions"])
    assert list(served["prediction"].astype(str)) == list(by_hps["prediction"].astype(str))
    probabilities = [c for c in by_hps.columns if c != "prediction"]
    assert np.allclose(served[probabilities].to_numpy(float), by_hps[probabilities].to_numpy(float), atol=1e-5)
