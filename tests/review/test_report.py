"""The search review from MLflow records alone: Optuna's plots of the rebuilt study, validation curves, the
leaderboard CSV, all on the parent run under report/."""

from __future__ import annotations

import pandas as pd
from optuna.trial import TrialState

from search.config.schema import parse_config
from search.records.leaderboard import trial_runs
from search.review.report import review_study, write_report
from tests.conftest import load_yaml
from tests.fabricate import Trial, record_search, sqlite_uri


def trials(n: int) -> list[Trial]:
    return [Trial(f"t{i}", [1.0 / (i + 1), 0.5 / (i + 1)], {"lr": str(10 ** -(1 + i % 3)), "n_layers": str(1 + i % 3),
                                                          "optimizer": "adam", "not_in_space": "x"})
            for i in range(n)] + [Trial("broken", [0.01], {"lr": "0.5"}, outcome="failed")]


def test_review_study_holds_every_trial_with_a_result_but_the_failed(tmp_path):
    cfg = parse_config(load_yaml("digits.yaml"))
    recorded = record_search(sqlite_uri(tmp_path), "review", trials(4))
    study = review_study(cfg, trial_runs(recorded.client, recorded.client.get_run(recorded.parent)))
    assert len(study.trials) == 4 and {t.state for t in study.trials} == {TrialState.COMPLETE}
    assert sorted(t.value for t in study.trials) == [0.125, 0.5 / 3, 0.25, 0.5]
    assert set(study.trials[0].params) == {"lr", "n_layers", "optimizer"}  # what is not in the space is left out
    assert study.direction.name == "MINIMIZE"


def test_report_logs_plots_and_the_leaderboard_on_the_parent(tmp_path):
    cfg = parse_config(load_yaml("digits.yaml"))
    recorded = record_search(sqlite_uri(tmp_path), "review", trials(6))
    client = recorded.client
    written = write_report(client, client.get_run(recorded.parent), cfg)
    assert {"optimization_history.png", "validation_curves.png", "slice.png"} <= set(written)
    logged = {a.path for a in client.list_artifacts(recorded.parent, "report")}
    assert logged == {f"report/{name}" for name in written}
    board = pd.read_csv(client.download_artifacts(recorded.parent, "leaderboard.csv", str(tmp_path)))
    assert board["trial"].tolist()[0] == "t5" and board["trial"].tolist()[-1] == "broken"


def test_a_search_without_trials_gets_no_curves_and_no_leaderboard(tmp_path):
    recorded = record_search(sqlite_uri(tmp_path), "empty", [])
    client = recorded.client
    written = write_report(client, client.get_run(recorded.parent), parse_config(load_yaml("digits.yaml")))
    assert "validation_curves.png" not in written  # Optuna still draws its (empty) axes
    assert [a.path for a in client.list_artifacts(recorded.parent)] == (["report"] if written else [])


def test_without_drawing_only_the_tables_are_written(tmp_path):
    """``tracking.review_plots: false``: the leaderboard (and nothing under report/) when the search ends."""
    cfg = parse_config(load_yaml("digits.yaml"))
    recorded = record_search(sqlite_uri(tmp_path), "undrawn", trials(3))
    client = recorded.client
    assert write_report(client, client.get_run(recorded.parent), cfg, draw=False) == []
    assert [a.path for a in client.list_artifacts(recorded.parent)] == ["leaderboard.csv"]
