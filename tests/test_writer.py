"""The background MLflow writer against a real tracking server: order kept, a run's epochs merged into few
requests, everything written once drained."""

from __future__ import annotations

import time

from mlflow.tracking import MlflowClient

from search.writer import TrackingWriter


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
