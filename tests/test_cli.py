"""The `hps` command as a user runs it: a real subprocess joining the session's Ray, a real MLflow server. Tests of
the argument and refusal logic call `search.cli.main` in this process (the same code, without paying ~4 s of imports
per command); the console script itself runs as a subprocess in the others."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from search.cli import main as hps_main
from tests.conftest import CONFIGS
from tests.stores import sqlite_store


def hps(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "search.cli", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def hps_here(*args: str, capsys) -> subprocess.CompletedProcess:
    """`hps ARGS` run in this process (`search.cli.main`) from the current directory, as a CompletedProcess."""
    capsys.readouterr()  # what came before is not this command's
    code = hps_main(list(args))
    out = capsys.readouterr()
    return subprocess.CompletedProcess(["hps", *args], code, out.out, out.err)


@pytest.mark.slow
def test_run_then_trials_from_the_command_line(ray_session, mlflow_server, tmp_path, capsys):
    address = ray_session.get_runtime_context().gcs_address
    run = hps("run", str(CONFIGS / "breast_cancer.yaml"), "--name", "cli-bc", "--num-samples", "3", "--max-epochs", "3",
              "--tracking-uri", mlflow_server, "--address", address, "--storage", str(tmp_path / "runs"),
              "--set", "scheduler.grace_period=1", "--set", "space.units.high=16", "--set", "search.max_concurrent=1",
              cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "best_val_loss" in run.stdout and "3 trials" in run.stdout
    # what was found in the data, said before the first trial (the config names the task: not "detected")
    assert run.stdout.splitlines()[1] == ("data sklearn:breast_cancer: binary, 30 features, "
                                          "340 train / 143 validation / 86 test rows")
    assert run.stdout.count("done,") == 3  # one progress line per finished trial

    csv = tmp_path / "board.csv"
    trials = hps_here("trials", "cli-bc", "--tracking-uri", mlflow_server, "--csv", str(csv), capsys=capsys)
    assert trials.returncode == 0, trials.stderr
    board = pd.read_csv(csv)
    assert len(board) == 3 and board["rank"].tolist() == [1, 2, 3]
    assert board["best_val_loss"].is_monotonic_increasing

    shown = hps_here("trials", "cli-bc", "--tracking-uri", mlflow_server, capsys=capsys)
    assert shown.returncode == 0 and board.loc[0, "trial"] in shown.stdout

    client = MlflowClient(mlflow_server)
    parent = client.get_run(board.loc[0, "run_id"]).data.tags["mlflow.parentRunId"]
    assert client.get_run(parent).data.params["search.num_samples"] == "3"


def test_trials_of_an_unknown_search_is_a_clear_error(mlflow_server, tmp_path):
    proc = hps("trials", "no-such-search", "--tracking-uri", mlflow_server, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "hps: error: no search named 'no-such-search' at this tracking URI"


def test_run_with_unreachable_tracking_uri_exits_2_quickly(tmp_path):
    proc = hps("run", str(CONFIGS / "wine.yaml"), "--tracking-uri", "http://127.0.0.1:9", "--storage", str(tmp_path),
               cwd=tmp_path)
    assert proc.returncode == 2
    assert "unreachable" in proc.stderr and proc.stderr.strip().count("\n") == 0


def test_storage_that_is_a_file_exits_2_before_any_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("")
    uri = sqlite_store(tmp_path / "mlruns.db")
    proc = hps_here("run", str(CONFIGS / "wine.yaml"), "--tracking-uri", uri, "--storage",
                    str(tmp_path / "a_file" / "runs"), capsys=capsys)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(f"hps: error: storage {tmp_path / 'a_file' / 'runs'} cannot")
    assert "search wine-mlp" not in proc.stdout  # nothing announced, nothing recorded
    client = MlflowClient(uri)
    assert not [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]


def test_reading_commands_refuse_a_mistyped_database_and_odd_names(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "typo.db"
    (tmp_path / "rows.csv").write_text("a,b\n1,2\n")
    for args in (["trials", "x"], ["report", "x"], ["evaluate", "x"], ["predict", "x", "rows.csv", "-o", "out.csv"]):
        proc = hps_here(*args, "--tracking-uri", f"sqlite:///{missing}", capsys=capsys)
        assert proc.returncode == 2 and f"no tracking database {missing}" in proc.stderr, (args, proc.stderr[-2000:])
    assert not missing.exists()
    for args in (["evaluate", "x"], ["predict", "x", "rows.csv", "-o", "out.csv"]):  # no retrying for minutes
        proc = hps_here(*args, "--tracking-uri", "http://127.0.0.1:9", capsys=capsys)
        assert proc.returncode == 2 and "unreachable" in proc.stderr, (args, proc.stderr[-2000:])
    database = sqlite_store(tmp_path / "mlruns.db")  # an existing, empty store
    quoted = hps_here("trials", "a'b", "--tracking-uri", database, capsys=capsys)
    assert quoted.returncode == 2 and "search names are letters, digits" in quoted.stderr
    to_nowhere = hps_here("trials", "x", "--csv", str(tmp_path / "no" / "board.csv"), "--tracking-uri", database,
                          capsys=capsys)
    assert to_nowhere.returncode == 2 and "its folder does not exist" in to_nowhere.stderr


COMMANDS = ("run", "resume", "trials", "evaluate", "predict", "report", "validate")


def test_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "search.cli", "--help"], capture_output=True, text=True).stdout
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("    ") and line.strip()]
    assert tuple(listed) == COMMANDS, out
    for command in COMMANDS:
        sub = subprocess.run([sys.executable, "-m", "search.cli", command, "--help"], capture_output=True, text=True)
        assert sub.returncode == 0 and sub.stdout.startswith(f"usage: hps {command} "), (command, sub.stdout)


def test_reading_commands_import_no_ray():
    """`hps trials/evaluate/predict/report` start without Ray (seconds saved on every call)."""
    code = ("import sys; import search.cli, search.records.connection, search.records.leaderboard, search.review.evaluate, search.review.predict, "
            "search.review.registry, search.review.report, search.review.plots; "
            "loaded = sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')); "
            "assert not loaded, loaded; import search.run.tuner; assert 'ray' in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_the_search_driver_imports_no_torch():
    """`hps run/resume` leave PyTorch to the trials' workers (~1.5 s saved on every start); the trainable, the pack
    servers and checkpoint reading still import fine where they run."""
    code = ("import sys; import search.run.tuner, search.run.packing.servers, trainables.ray_adapter; "
            "assert 'torch' not in sys.modules, 'the driver imported torch'; "
            "import search.run.packing.server, trainables.checkpoint; assert 'torch' in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
