"""The background MLflow writer against a real tracking server: order kept, a run's epochs merged into few
requests, everything written once drained; a write that cannot succeed given up after a few tries (whatever it
raises) and listed, never blocking the writes behind it; model uploads read from the search's storage folder
(local or S3) and fail loudly when the folder is gone; pending writes saved whole and replayed."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pyarrow.fs
import pytest
from mlflow.tracking import MlflowClient

from search.records import writer as writer_module
from search.records.storage import pending_file, state_exists
from search.records.writer import TrackingWriter
from tests.conftest import free_port


def test_epochs_of_a_run_are_merged_into_few_requests_and_all_written(mlflow_server):
    client = MlflowClient(mlflow_server)
    experiment = client.create_experiment(f"writer-{time.time_ns()}")
    writer = TrackingWriter(mlflow_server)
    requests = []
    real_log_batch = writer.client.log_batch

    def counting_log_batch(run_id, **kwargs):  # a spy: every request still goes to the real server
        requests.append(len(kwargs.get("metrics", [])))
        return real_log_batch(run_id, **kwargs)

    writer.client.log_batch = counting_log_batch
    writer.submit("create_run", "trial-a", experiment_id=experiment, tags={}, run_name="a")
    writer.submit("create_run", "trial-b", experiment_id=experiment, tags={}, run_name="b")
    for epoch in range(1, 31):  # two trials reporting 30 short epochs (~50 ms each) each, interleaved
        for key in ("trial-a", "trial-b"):
            writer.submit("log_batch", key, metrics=[("val_loss", 1.0 / epoch, 0, epoch)], tags={"epoch": epoch})
        time.sleep(0.05)  # slower than the writer: without a batching window each epoch would be its own request
    writer.submit("set_status", "trial-a", status="FINISHED")
    assert writer.drain(60)
    writer.close()

    assert sum(requests) == 60 and len(requests) <= 12, requests  # 60 epochs, a handful of requests
    for key in ("trial-a", "trial-b"):
        run = client.get_run(writer.runs[key])
        history = client.get_metric_history(run.info.run_id, "val_loss")
        assert sorted(m.step for m in history) == list(range(1, 31))
        assert run.data.tags["epoch"] == "30"  # the last epoch's tag wins: order held within the run
    assert client.get_run(writer.runs["trial-a"]).info.status == "FINISHED"


# --- failures: bounded, reported, never blocking later writes ---------------------------------------------------------



@pytest.fixture
def fast_http(monkeypatch):
    """What `hps` sets before a search: MLflow's client gives up on an unreachable server quickly."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")


def new_experiment(client: MlflowClient) -> str:
    return client.create_experiment(f"writer-{time.time_ns()}")


def test_a_write_failing_with_any_error_is_given_up_and_later_writes_go_through(mlflow_server, monkeypatch):
    # The same tries, without their ~9 s of backoff (what is checked is the giving up, not the schedule).
    monkeypatch.setattr(writer_module, "BACKOFF_S", (0.05,) * len(writer_module.BACKOFF_S))
    client = MlflowClient(mlflow_server)
    writer = TrackingWriter(mlflow_server)
    writer.submit("create_run", "t", experiment_id=new_experiment(client), tags={}, run_name="t")
    # MLflow's own client raises a plain Exception (not an MlflowException) for an unknown status: it can never
    # succeed, and must not hold up the writes queued behind it.
    writer.submit("set_status", "t", status="NOT-A-STATUS")
    writer.submit("log_batch", "t", metrics=[("val_loss", 0.5, 0, 1)], tags={"after": "yes"})
    started = time.monotonic()
    assert writer.drain(30), "the failing write blocked the queue"
    writer.close()
    assert time.monotonic() - started < 10  # a few tries, then given up
    run = client.get_run(writer.runs["t"])
    assert run.data.tags["after"] == "yes" and run.data.metrics["val_loss"] == 0.5
    assert [(g["kind"], g["key"]) for g in writer.given_up] == [("set_status", "t")]
    assert "NOT-A-STATUS" in writer.given_up[0]["reason"]


def test_a_run_created_although_no_answer_came_is_not_created_twice(mlflow_server, monkeypatch):
    # The server commits the run, then the answer is lost (a timeout, a 5xx from a proxy): a blind retry of
    # create_run made a second run of the trial, RUNNING for ever, shown twice on the leaderboard.
    monkeypatch.setattr(writer_module, "BACKOFF_S", (0.05,) * len(writer_module.BACKOFF_S))
    client = MlflowClient(mlflow_server)
    experiment = new_experiment(client)
    parent = client.create_run(experiment).info.run_id
    writer = TrackingWriter(mlflow_server)
    real_create_run, calls = writer.client.create_run, []

    def create_then_lose_the_answer(*args, **kwargs):  # the real server creates the run every time
        calls.append(real_create_run(*args, **kwargs))
        if len(calls) == 1:
            raise ConnectionError("the answer was lost (injected)")
        return calls[-1]

    writer.client.create_run = create_then_lose_the_answer
    tags = {writer_module.PARENT_TAG: parent, "hps.trial_id": "t1"}
    writer.submit("create_run", "t1", experiment_id=experiment, tags=tags, run_name="trial-t1")
    writer.submit("log_batch", "t1", metrics=[("val_loss", 0.5, 0, 1)])
    assert writer.drain(30)
    writer.close()
    runs = client.search_runs([experiment], "tags.`hps.trial_id` = 't1'")
    assert len(calls) == 1 and len(runs) == 1  # the retry found the run the first try made
    assert writer.runs["t1"] == runs[0].info.run_id and runs[0].data.metrics["val_loss"] == 0.5


def test_writes_the_server_refuses_are_given_up_and_listed(mlflow_server, caplog):
    client = MlflowClient(mlflow_server)
    writer = TrackingWriter(mlflow_server)
    writer.submit("create_run", "t", experiment_id=new_experiment(client), tags={}, run_name="t")
    writer.submit("log_params", "t", params={"lr": 0.1})
    writer.submit("log_params", "t", params={"lr": 0.2})  # a param cannot change: INVALID_PARAMETER_VALUE
    writer.submit("log_batch", "t", tags={"after": "yes"})
    with caplog.at_level(logging.ERROR, logger="search.records.writer"):
        assert writer.drain(30)
    writer.close()
    assert [g["kind"] for g in writer.given_up] == ["log_params"] and writer.dropped == 1
    assert any("gave up writing log_params" in r.getMessage() for r in caplog.records)
    assert client.get_run(writer.runs["t"]).data.tags["after"] == "yes"


def make_model_folder(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "weights.pt").write_bytes(b"weights")
    (folder / "model.json").write_text("{}")
    return folder


def test_an_upload_whose_folder_is_gone_fails_loudly_and_sets_no_model_tag(mlflow_server, tmp_path, caplog):
    client = MlflowClient(mlflow_server)
    experiment = new_experiment(client)
    make_model_folder(tmp_path / "trial_a" / "checkpoint_000002" / "model")
    writer = TrackingWriter(mlflow_server, root=str(tmp_path))  # sources are relative to the experiment folder
    for key in ("a", "b"):
        writer.submit("create_run", key, experiment_id=experiment, tags={}, run_name=key)
        writer.submit("log_artifacts", key, local_dir=f"trial_{key}/checkpoint_000002/model", artifact_path="model",
                      tags={"hps.model": "model"})
    with caplog.at_level(logging.ERROR, logger="search.records.writer"):
        assert writer.drain(30)
    writer.close()

    uploaded = client.get_run(writer.runs["a"])
    assert uploaded.data.tags["hps.model"] == "model"
    assert {a.path for a in client.list_artifacts(writer.runs["a"], "model")} == {"model/weights.pt", "model/model.json"}
    assert writer.uploaded == {"a"}
    lost = client.get_run(writer.runs["b"])
    assert "hps.model" not in lost.data.tags and client.list_artifacts(writer.runs["b"]) == []
    assert [(g["kind"], g["key"]) for g in writer.given_up] == [("log_artifacts", "b")]
    assert "trial_b/checkpoint_000002/model is missing" in writer.given_up[0]["reason"]
    assert any("gave up uploading model of b" in r.getMessage() for r in caplog.records)


def test_pending_writes_saved_whole_and_replayed_with_what_was_given_up(mlflow_server, tmp_path, fast_http):
    search = tmp_path / "runs" / "s"
    make_model_folder(search / "trial_a" / "checkpoint_000001" / "model")
    client = MlflowClient(mlflow_server)
    experiment = new_experiment(client)
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there: the writes wait
    writer = TrackingWriter(down, root=str(search))
    for key in ("a", "b"):
        writer.submit("create_run", key, experiment_id=experiment, tags={}, run_name=key)
        writer.submit("log_batch", key, metrics=[("val_loss", 0.5, 0, 1)])
        writer.submit("log_artifacts", key, local_dir=f"trial_{key}/checkpoint_000001/model", artifact_path="model",
                      tags={"hps.model": "model"})
    assert not writer.drain(1)
    pending = search / "mlflow-pending.json"
    assert writer.save_pending(pending) == 6
    assert [p.name for p in search.iterdir() if p.is_file()] == ["mlflow-pending.json"]  # no temporary file left
    assert len(json.loads(pending.read_text())["ops"]) == 6

    # Resumed from another place (a moved storage folder): sources are relative to the experiment folder.
    moved = tmp_path / "elsewhere"
    search.rename(moved)
    replay = TrackingWriter.replay(moved / "mlflow-pending.json", mlflow_server, timeout=60, root=str(moved))
    assert replay.done and not (moved / "mlflow-pending.json").exists()
    assert [(g["kind"], g["key"]) for g in replay.given_up] == [("log_artifacts", "b")]
    runs = {r.info.run_name: r for r in client.search_runs([experiment])}
    assert runs["a"].data.tags["hps.model"] == "model" and "hps.model" not in runs["b"].data.tags
    assert runs["b"].data.metrics["val_loss"] == 0.5  # the writes after the lost upload were made


def test_with_s3_storage_pending_writes_and_uploads_live_in_the_bucket(mlflow_server, s3_bucket, monkeypatch,
                                                                       tmp_path, fast_http):
    endpoint, s3 = s3_bucket
    for name, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    root = "s3://hps/searches/s3-search"
    pending = pending_file("s3://hps/searches", "s3-search")
    assert pending == f"{root}/mlflow-pending.json"
    local = make_model_folder(tmp_path / "model")
    s3.create_dir("hps/searches/s3-search/trial_a/checkpoint_000001")
    pyarrow.fs.copy_files(str(local), "hps/searches/s3-search/trial_a/checkpoint_000001/model",
                          source_filesystem=pyarrow.fs.LocalFileSystem(), destination_filesystem=s3)

    client = MlflowClient(mlflow_server)
    experiment = new_experiment(client)
    writer = TrackingWriter(f"http://127.0.0.1:{free_port()}", root=root)  # tracking server down
    writer.submit("create_run", "a", experiment_id=experiment, tags={}, run_name="a")
    writer.submit("log_artifacts", "a", local_dir="trial_a/checkpoint_000001/model", artifact_path="model",
                  tags={"hps.model": "model"})
    writer.save_pending(pending)
    assert state_exists(pending) and list(tmp_path.glob("*pending*")) == []  # in the bucket, not the working folder

    replay = TrackingWriter.replay(pending, mlflow_server, timeout=60, root=root)
    assert replay.done and replay.given_up == [] and not state_exists(pending)
    (run,) = client.search_runs([experiment])
    assert run.data.tags["hps.model"] == "model"
    assert {a.path for a in client.list_artifacts(run.info.run_id, "model")} == {"model/weights.pt", "model/model.json"}
