"""What the MLflow UI and MLflow's own APIs show of a search, on a real `mlflow server` and a real local Ray: every
kept trial model a LoggedModel (Models tab, `search_logged_models`, `models:/<model_id>`), the split as datasets on
every run, a model-training experiment opened on its runs, the search's summary as metrics of its parent run."""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest
from mlflow.entities import LoggedModelStatus
from mlflow.tracking import MlflowClient
from sklearn.datasets import load_breast_cancer

from search.cli import main
from search.records.connection import fluent_uris
from search.records.leaderboard import find_search_run, trial_runs
from search.records.logged_models import LOGGED_MODEL_TAG, find_logged_model, log_trial_model, trial_models
from search.review.registry import SOURCE_MODELS_TAG
from tests.conftest import load_yaml, shrink
from trainables.checkpoint import load_model
from trainables.data import Preprocessor
from trainables.predict import predict_frame

pytestmark = pytest.mark.slow
NAME = "review-bc"


@pytest.fixture(scope="module")
def reviewed(ray_session, mlflow_server, tmp_path_factory):
    import yaml

    folder = tmp_path_factory.mktemp("review")
    raw = shrink(load_yaml("breast_cancer.yaml"), NAME, mlflow_server, num_samples=3, max_epochs=2)
    raw["evaluate"] = {"top_k": 2}
    (folder / "c.yaml").write_text(yaml.safe_dump(raw))
    address = ray_session.get_runtime_context().gcs_address
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["run", str(folder / "c.yaml"), "--address", address, "--storage", str(folder / "runs")])
    assert code == 0
    assert main(["evaluate", NAME, "--tracking-uri", mlflow_server]) == 0
    client = MlflowClient(mlflow_server)
    parent = client.get_run(find_search_run(client, NAME).info.run_id)
    return client, parent, trial_runs(client, parent), out.getvalue(), folder


def test_every_kept_trial_model_is_a_logged_model_that_loads_and_predicts(reviewed, mlflow_server, tmp_path):
    client, parent, children, _, _ = reviewed
    models = trial_models(client, parent.info.experiment_id)
    with_model = [c for c in children if c.data.tags.get("hps.model") == "model"]
    assert len(with_model) == 3 and len(models) == 3  # one per trial, no duplicate
    by_run = {m.source_run_id: m for m in models}
    rows = load_breast_cancer(as_frame=True).data.head(7)
    for child in with_model:
        model = by_run[child.info.run_id]
        assert child.data.tags[LOGGED_MODEL_TAG] == model.model_id and model.status == LoggedModelStatus.READY
        assert [o.model_id for o in child.outputs.model_outputs] == [model.model_id]  # the runs table's Models
        assert model.params == child.data.params  # the trial's hyperparameters
        linked = {m.key: m.value for m in model.metrics}
        assert linked and linked == {k: v for k, v in child.data.metrics.items() if k.startswith("best_epoch_")}
        assert all(m.model_id == model.model_id for m in model.metrics)
        with fluent_uris(mlflow_server):
            predicted = mlflow.pyfunc.load_model(f"models:/{model.model_id}").predict(rows)
        local = client.download_artifacts(child.info.run_id, "model", str(tmp_path / child.info.run_id))
        network, description = load_model(local)
        expected = predict_frame(network, Preprocessor.from_dict(description["preprocessor"]), rows)
        pd.testing.assert_frame_equal(predicted.reset_index(drop=True), expected.reset_index(drop=True))


def test_the_split_is_a_dataset_input_of_every_run_with_its_fingerprint_as_digest(reviewed):
    client, parent, children, _, _ = reviewed
    fingerprint = parent.data.tags["hps.split_fingerprint"]

    def inputs(run):
        return {(i.dataset.name, i.dataset.digest, {t.key: t.value for t in i.tags}["mlflow.data.context"])
                for i in client.get_run(run.info.run_id).inputs.dataset_inputs}

    development = {("sklearn:breast_cancer (train)", fingerprint, "training"),
                   ("sklearn:breast_cancer (validation)", fingerprint, "validation")}
    assert inputs(parent) == development | {("sklearn:breast_cancer (test)", fingerprint, "test")}  # evaluated
    for child in children:
        assert inputs(child) == development  # never the test rows
    schema = client.get_run(parent.info.run_id).inputs.dataset_inputs[0].dataset.schema
    assert '"mean radius"' in schema and '"double"' in schema


def test_the_experiment_opens_on_its_runs_and_the_parent_carries_the_summary(reviewed, mlflow_server):
    client, parent, _, printed, _ = reviewed
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert f"review: {mlflow_server}/#/experiments/{parent.info.experiment_id}/runs" in printed
    metrics = parent.data.metrics
    assert metrics["trials_total"] == 3
    assert metrics["best_val_loss"] == pytest.approx(float(parent.data.tags["hps.best_val_loss"]), rel=1e-5)
    assert metrics["wall_time_s"] > 0
    assert metrics["trials_completed"] + metrics["trials_stopped_early"] + metrics["trials_failed"] == 3


def test_the_champion_names_the_logged_models_it_came_from(reviewed):
    client, parent, children, _, _ = reviewed
    version = client.get_model_version_by_alias(NAME, "champion")
    sources = version.tags[SOURCE_MODELS_TAG].split(",")
    assert len(sources) == 2  # top 2: both members' LoggedModels, best first
    ranked = parent.data.tags["hps.test_trial_id"].split(",")
    by_trial = {c.data.tags["hps.trial_id"]: c.data.tags[LOGGED_MODEL_TAG] for c in children}
    assert sources == [by_trial[trial] for trial in ranked]


def test_a_retried_logged_model_write_reuses_the_model_it_made(reviewed, tmp_path):
    # The writer retries an upload whose answer was lost: the LoggedModel of that run is found and finished, never
    # made twice.
    client, parent, children, _, _ = reviewed
    child = children[0]
    folder = client.download_artifacts(child.info.run_id, "model", str(tmp_path))
    before = find_logged_model(client, parent.info.experiment_id, child.info.run_id)
    again = log_trial_model(client, parent.info.experiment_id, child.info.run_id, folder, "x", {}, {})
    assert again == before.model_id
    assert len(trial_models(client, parent.info.experiment_id)) == 3


def test_hps_predict_takes_a_trial_models_uri(reviewed, mlflow_server, tmp_path):
    client, parent, children, _, _ = reviewed
    model_id = children[0].data.tags[LOGGED_MODEL_TAG]
    load_breast_cancer(as_frame=True).data.head(4).to_csv(tmp_path / "rows.csv", index=False)
    assert main(["predict", f"models:/{model_id}", str(tmp_path / "rows.csv"), "-o", str(tmp_path / "out.csv"),
                 "--tracking-uri", mlflow_server]) == 0
    assert len(pd.read_csv(tmp_path / "out.csv")) == 4


def test_a_replayed_upload_finishes_the_logged_model_an_earlier_try_made(reviewed, mlflow_server, tmp_path):
    # A search that saved its pending writes (tracking server gone) and is resumed replays them as tried: a model
    # upload whose answer was lost must find the LoggedModel it made, not make a second one.
    import json

    from search.records.writer import TrackingWriter

    client, parent, children, _, _ = reviewed
    child = children[1]
    folder = client.download_artifacts(child.info.run_id, "model", str(tmp_path / "model"))
    op = {"kind": "log_artifacts", "key": "t", "queued_at": 0.0, "tried": False,
          "args": {"local_dir": folder, "artifact_path": "model", "tags": {"hps.model": "model"},
                   "logged_model": {"experiment_id": parent.info.experiment_id, "name": "again", "params": {},
                                    "metrics": {"best_epoch_val_loss": 0.5}}}}
    pending = tmp_path / "pending.json"
    pending.write_text(json.dumps({"tracking_uri": mlflow_server, "runs": {"t": child.info.run_id}, "given_up": [],
                                   "ops": [op]}))
    replay = TrackingWriter.replay(pending, mlflow_server)
    assert replay.done and not replay.given_up
    assert len(trial_models(client, parent.info.experiment_id)) == 3
    assert client.get_run(child.info.run_id).data.tags[LOGGED_MODEL_TAG] == child.data.tags[LOGGED_MODEL_TAG]
