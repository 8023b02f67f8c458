"""End to end against the session's real `mlflow server` and Ray: a warm-started search on a narrowed space, and a
two-objective search with its Pareto front, `hps trials` column and `hps evaluate --pick` (tiny budgets)."""

from __future__ import annotations

import copy

import pytest
import yaml
from mlflow.tracking import MlflowClient

from search.cli import main
from search.config.pareto import FRONT_COLUMN, pick
from search.config.schema import parse_config
from search.records.leaderboard import find_search_run, leaderboard, trial_runs
from search.run.tuner import run_search
from tests.conftest import load_yaml, shrink

pytestmark = pytest.mark.slow


def _lrs_in_start_order(client: MlflowClient, parent_id: str) -> list[float]:
    children = sorted(trial_runs(client, client.get_run(parent_id)), key=lambda c: c.info.start_time)
    return [float(c.data.params["lr"]) for c in children]


@pytest.fixture(scope="module")
def earlier(ray_session, mlflow_server, tmp_path_factory):
    raw = shrink(load_yaml("wine.yaml"), "it-warm-earlier", mlflow_server, num_samples=4, max_epochs=2)
    raw["scheduler"]["type"] = "fifo"  # every trial completes: all four can be kept
    raw["tracking"]["log_models"] = "none"
    outcome = run_search(parse_config(raw), storage=str(tmp_path_factory.mktemp("earlier")))
    return raw, outcome


def test_a_missing_earlier_search_is_refused_before_anything_starts(mlflow_server, tmp_path, capsys):
    raw = shrink(load_yaml("wine.yaml"), "it-warm-missing", mlflow_server)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    code = main(["run", str(path), "--warm-start", "no-such-search", "--storage", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2 and err.strip() == "hps: error: no search named 'no-such-search' at this tracking URI"
    assert not (tmp_path / "runs" / "it-warm-missing").exists()


def test_warm_start_on_a_narrowed_space(earlier, mlflow_server, tmp_path, capsys):
    raw, outcome = earlier
    client = MlflowClient(mlflow_server)
    board = outcome.leaderboard
    lrs = sorted(float(v) for v in board["param.lr"])
    # Narrowed to the two smallest learning rates: the other two earlier trials no longer fit.
    narrowed = copy.deepcopy(raw)
    narrowed["name"] = "it-warm-next"
    narrowed["space"]["lr"] = {"type": "float", "low": lrs[0], "high": lrs[1], "log": True}
    narrowed["search"].update(warm_start_top_k=2, num_samples=3)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(narrowed))
    code = main(["run", str(path), "--warm-start", "it-warm-earlier", "--storage", str(tmp_path / "runs")])
    out = capsys.readouterr().out
    assert code == 0
    assert ("warm start from search it-warm-earlier: 2 earlier trials told to the sampler, 2 dropped (outside the "
            "current space); its top 2 tried first") in out
    parent = find_search_run(client, "it-warm-next")
    earlier_parent = outcome.parent_run_id
    assert parent.data.tags["hps.warm_start"] == f"it-warm-earlier (parent run {earlier_parent})"
    assert (parent.data.tags["hps.warm_start_kept"], parent.data.tags["hps.warm_start_dropped"]) == ("2", "2")
    fitting = board[board["param.lr"].astype(float) <= lrs[1]]  # the earlier leaderboard's order: best first
    first_two = _lrs_in_start_order(client, parent.info.run_id)[:2]
    assert sorted(first_two) == sorted(fitting["param.lr"].astype(float).tolist())
    # The first trials repeat the earlier top configurations exactly (all their sampled parameters).
    earlier_params = {c.data.params["lr"]: c.data.params for c in trial_runs(client, client.get_run(earlier_parent))}
    for child in trial_runs(client, parent):
        if float(child.data.params["lr"]) in first_two:
            assert child.data.params == earlier_params[child.data.params["lr"]]


@pytest.fixture(scope="module")
def two_objectives(ray_session, mlflow_server, tmp_path_factory):
    raw = shrink(load_yaml("wine.yaml"), "it-pareto", mlflow_server, num_samples=6, max_epochs=3)
    raw["search"].pop("metric")
    raw["search"]["objectives"] = [{"metric": "val_accuracy", "mode": "max"}, {"metric": "n_params", "mode": "min"}]
    raw["tracking"]["review_plots"] = True  # the front's plot
    outcome = run_search(parse_config(raw), storage=str(tmp_path_factory.mktemp("pareto")))
    return outcome


def test_the_parent_run_holds_the_front_as_a_table_and_a_plot(two_objectives, mlflow_server, tmp_path):
    import pandas as pd

    client = MlflowClient(mlflow_server)
    parent = client.get_run(two_objectives.parent_run_id)
    assert parent.data.tags["hps.objectives"] == "val_accuracy:max,n_params:min"
    assert parent.data.tags["hps.metric"] == "val_accuracy"
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"pareto_front.csv", "leaderboard.csv"} <= artifacts
    assert "report/pareto_front.png" in {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    table = pd.read_csv(client.download_artifacts(parent.info.run_id, "pareto_front.csv", str(tmp_path)))
    board = leaderboard(client, parent)
    assert sorted(table["trial"]) == sorted(board.loc[board[FRONT_COLUMN], "trial"])
    assert {"best_val_accuracy", "n_params"} <= set(table.columns)
    assert (board["n_params"] > 0).all()


def test_trials_marks_the_front_and_evaluate_picks_from_it(two_objectives, mlflow_server, capsys):
    assert main(["trials", "it-pareto", "--tracking-uri", mlflow_server]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert "pareto_front" in header.split() and "n_params" in header.split()
    client = MlflowClient(mlflow_server)
    board = leaderboard(client, find_search_run(client, "it-pareto"))
    expected = pick(board, [("val_accuracy", "max"), ("n_params", "min")], "smallest-within:0.5")["trial"]
    assert main(["evaluate", "it-pareto", "--tracking-uri", mlflow_server, "--pick", "smallest-within:0.5"]) == 0
    out = capsys.readouterr().out
    assert f"chose trial {expected}:" in out and "picked from the Pareto front by smallest-within:0.5" in out
    parent = find_search_run(client, "it-pareto")
    assert parent.data.tags["hps.test_trial_id"] == expected
