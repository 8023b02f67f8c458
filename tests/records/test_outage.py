"""A tracking-server outage loses no model and hides no lost write (real `mlflow server` processes stopped and
started, `hps` as a subprocess joined to the session's Ray).

- Models waiting for the server are read from the trials' checkpoints in the storage folder, which are kept until
  the upload succeeded: a "reboot" that wipes the system temp folder between the outage and `hps resume` loses
  nothing, and every model and its ``hps.model`` tag arrive once the server is back; a model whose files are gone
  is reported (no tag, a count on the parent run, a line, exit 1) instead of "uploaded".
- A write the server refuses is given up, counted on the parent run, reported in one line, and `hps run` exits 1.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from search.records.leaderboard import find_search_run
from search.records.logged_models import trial_models
from tests.run.test_resilience import children, output_of, slow_config, wait_until
from tests.run.test_resilience import start_hps as start_hps_with_env

pytestmark = pytest.mark.slow


def start_hps(*args: str, cwd: Path, tmpdir: Path):
    """`hps` with its own system temp folder (TMPDIR), which the test wipes to stand for a reboot."""
    # Experiment snapshots every half second (Tune's default adapts, ~10 s): ended trials are recorded as ended on
    # disk while the others still run, which is when their checkpoints become candidates for pruning.
    env = {**os.environ, "TMPDIR": str(tmpdir), "TUNE_GLOBAL_CHECKPOINT_S": "0.5"}
    return start_hps_with_env(*args, cwd=cwd, env=env)


def checkpoint_models(trial_dir: Path) -> list[Path]:
    return sorted(trial_dir.glob("checkpoint_*/model"))


def test_models_waiting_for_the_server_survive_a_reboot_and_a_lost_one_fails_loudly(ray_session, mlflow_control,
                                                                                     tmp_path):
    server = mlflow_control  # the session's server, stopped for the outage and started again
    tmpdir = tmp_path / "system-tmp"
    tmpdir.mkdir()
    storage = tmp_path / "runs"
    try:
        address = ray_session.get_runtime_context().gcs_address
        # One trial at a time (one trial worker to start): the trials after the first end during the outage.
        config = slow_config(tmp_path / "c.yaml", "outage-models", server.uri, num_samples=3, max_epochs=6,
                             max_concurrent=1)
        raw = yaml.safe_load(config.read_text())
        raw["tracking"]["outage_wait_s"] = 2  # give up waiting for the server soon after the search ends
        config.write_text(yaml.safe_dump(raw))
        proc = start_hps("run", str(config), "--address", address, "--storage", str(storage), cwd=tmp_path,
                         tmpdir=tmpdir)
        client = MlflowClient(server.uri)
        wait_until(lambda: any(r.data.metrics.get("best_epoch", 0) >= 1 for r in children(client, "outage-models")),
                   what="first epochs logged", alive=proc)
        server.stop()  # every trial ends, and every model upload waits, while the server is down
        assert proc.wait() == 1, output_of(tmp_path)
        pending = storage / "outage-models" / "mlflow-pending.json"
        assert f"saved in {pending}" in output_of(tmp_path)
        assert not list(tmp_path.glob("*pending*"))
        # Nothing of the search's lives in the system temp folder; the checkpoints holding the models waiting for
        # upload are kept in the storage folder.
        trial_dirs = sorted(p for p in (storage / "outage-models").iterdir() if p.is_dir())
        assert len(trial_dirs) == 3 and all(checkpoint_models(t) for t in trial_dirs), \
            [list(t.iterdir()) for t in trial_dirs]

        shutil.rmtree(tmpdir)  # the machine restarts: its temp folder is gone
        tmpdir.mkdir()
        # ...and one trial's model files are lost too (a disk problem): that upload must fail loudly.
        lost_dir = trial_dirs[0]
        lost = lost_dir.name.split("_")[2]  # tune_trainable_<trial id>_<n>_<params>
        for model in checkpoint_models(lost_dir):
            shutil.rmtree(model)
        server.start()
        resumed = start_hps("resume", "outage-models", "--address", address, "--storage", str(storage),
                            cwd=tmp_path, tmpdir=tmpdir)
        assert resumed.wait() == 1, output_of(tmp_path)
        assert not pending.exists()
        errors = [line for line in output_of(tmp_path).splitlines() if line.startswith("hps: error:")]
        assert errors[-1].startswith(f"hps: error: 1 MLflow write(s) were given up (first: log_artifacts for {lost}:"), \
            output_of(tmp_path)
        assert f"gave up uploading model of {lost}" in output_of(tmp_path)

        runs = children(client, "outage-models")
        assert len(runs) == 3 and {r.data.tags["hps.outcome"] for r in runs} == {"completed"}
        for run in runs:
            files = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
            if run.data.tags["hps.trial_id"] == lost:  # no files, and no tag claiming a model
                assert "hps.model" not in run.data.tags and not files, (run.data.tags, files)
                continue
            assert run.data.tags.get("hps.model") == "model", run.data.tags
            assert {"model/weights.pt", "model/model.json"} <= files, (run.info.run_name, files)
        parent = find_search_run(client, "outage-models")
        assert parent.info.status == "FINISHED" and parent.data.tags["hps.writes_given_up"] == "1"
        # The LoggedModels: one for each uploaded model, made after the outage, none for the lost one, none twice.
        models = trial_models(client, parent.info.experiment_id)
        assert sorted(m.source_run_id for m in models) == sorted(r.info.run_id for r in runs
                                                                 if r.data.tags["hps.trial_id"] != lost)
        assert not any(checkpoint_models(t) for t in trial_dirs[1:])  # uploaded: now pruned
        assert list(lost_dir.glob("checkpoint_*"))  # given up: its checkpoints stay
    finally:
        server.start()


def test_a_write_the_server_refuses_is_counted_reported_and_exits_1(ray_session, mlflow_server, tmp_path):
    address = ray_session.get_runtime_context().gcs_address
    config = slow_config(tmp_path / "c.yaml", "refused-writes", mlflow_server, num_samples=2, max_epochs=5,
                         max_concurrent=1)
    proc = start_hps("run", str(config), "--address", address, "--storage", str(tmp_path / "runs"), cwd=tmp_path,
                     tmpdir=Path(os.environ.get("TMPDIR", "/tmp")))
    client = MlflowClient(mlflow_server)

    def running_trial():
        return next((r for r in children(client, "refused-writes")
                     if r.info.status == "RUNNING" and r.data.metrics.get("best_epoch", 0) >= 1), None)

    # Someone deletes a trial's run from the MLflow UI mid-search: the server refuses that run's next writes.
    client.delete_run(wait_until(running_trial, what="a trial with an epoch logged", alive=proc).info.run_id)
    assert proc.wait() == 1, output_of(tmp_path)
    output = output_of(tmp_path)
    error_lines = [line for line in output.splitlines() if line.startswith("hps: error:")]
    assert len(error_lines) == 1 and "MLflow write(s) were given up" in error_lines[0], output
    assert "hps.writes_given_up" in error_lines[0]
    parent = find_search_run(client, "refused-writes")
    assert parent.info.status == "FINISHED" and int(parent.data.tags["hps.writes_given_up"]) >= 1


def test_an_outage_as_the_search_closes_is_waited_out_or_left_to_resume(ray_session, mlflow_link, mlflow_server,
                                                                         tmp_path, monkeypatch, capsys, caplog):
    """The tracking server stops answering exactly when the trials have ended and the search closes (ranking,
    marking the best, closing the parent run). Once it stays away longer than `tracking.outage_wait_s`: exit 1 with
    one line naming `hps resume`, nothing lost. Then, resuming, it goes away again and comes back within the wait:
    the search closes, its parent run FINISHED (it once stayed RUNNING, exit 1)."""
    from search.cli import main as hps_main
    from search.run import tuner
    from tests.conftest import load_yaml, shrink

    raw = shrink(load_yaml("digits.yaml"), "closing-outage", mlflow_link.uri, num_samples=2, max_epochs=2)
    raw["tracking"]["outage_wait_s"] = 4
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(raw))
    storage = str(tmp_path / "runs")
    address = ray_session.get_runtime_context().gcs_address
    real_finish, back_after = tuner._finish, []

    def outage_as_it_closes(*args, **kwargs):
        if not mlflow_link.is_cut and not back_after:  # the first try of each command
            mlflow_link.cut()
            back_after.append(None)
            if restore_in is not None:
                threading.Timer(restore_in, mlflow_link.restore).start()
        return real_finish(*args, **kwargs)

    monkeypatch.setattr(tuner, "_finish", outage_as_it_closes)
    restore_in = None  # first: it does not come back in time
    assert hps_main(["run", str(config), "--address", address, "--storage", storage]) == 1
    err = capsys.readouterr().err
    assert "stopped answering while the search closed" in err and "hps resume closing-outage" in err, err
    mlflow_link.restore()
    client = MlflowClient(mlflow_server)
    assert len(children(client, "closing-outage")) == 2  # every trial recorded before the outage

    back_after.clear()
    restore_in = 1.5  # then: back within the wait
    caplog.clear()
    assert hps_main(["resume", "closing-outage", "--address", address, "--storage", storage]) == 0, \
        capsys.readouterr().err
    assert "waiting up to" in caplog.text and "tracking server is back" in caplog.text, caplog.text
    parent = find_search_run(client, "closing-outage")
    assert parent.info.status == "FINISHED"
    runs = children(client, "closing-outage")
    assert len(runs) == 2 and sum(r.data.tags.get("hps.best") == "true" for r in runs) == 1
