"""The search review on the parent run: leaderboard CSV and PNG plots, (re)generated from MLflow records."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import optuna
import pandas as pd
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from search.config.pareto import FRONT_COLUMN, front_table, objective_columns
from search.config.schema import HpsConfig
from search.config.space import distribution_for
from search.records.leaderboard import leaderboard, parse_number, trial_runs

TOP_CURVES = 8
# As in search/run/searcher.py (which `hps report` does not import): "A new study created in memory" says nothing here.
optuna.logging.set_verbosity(optuna.logging.WARNING)


def review_study(cfg: HpsConfig, runs: list[Run]) -> optuna.Study:
    """An Optuna study rebuilt from the trial runs, for Optuna's plots.

    Every trial that produced a result enters as COMPLETE with its best validation value (stopped ones
    included: for reviewing the space, a trial ASHA stopped early still says something about its region).
    """
    metric = cfg.search.metric
    study = optuna.create_study(direction="minimize" if cfg.search.mode == "min" else "maximize")
    for run in sorted(runs, key=lambda r: r.info.start_time):
        value = run.data.metrics.get(f"best_{metric}")
        if value is None or run.data.tags.get("hps.outcome") == "failed":
            continue
        params, dists = {}, {}
        for name, text in run.data.params.items():
            dist = distribution_for(cfg.space, name)
            if dist is not None:
                params[name], dists[name] = parse_number(text), dist
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=value))
    return study


def write_report(client: MlflowClient, parent: Run, cfg: HpsConfig, draw: bool = True) -> list[str]:
    """Log the review on the parent run: ``leaderboard.csv`` (and a two-objective search's ``pareto_front.csv``)
    and, with ``draw``, the PNG plots under ``report/``; returns the names written."""
    runs = trial_runs(client, parent)
    board = leaderboard(client, parent)
    written = _draw_plots(client, parent, cfg, runs, board) if draw else []
    if not board.empty:
        log_table(client, parent.info.run_id, board, "leaderboard.csv")
    written_front = write_front(client, parent.info.run_id, board, cfg, draw)
    return sorted([p.name for p in written] + written_front)


def _draw_plots(client: MlflowClient, parent: Run, cfg: HpsConfig, runs: list[Run], board: pd.DataFrame) -> list[Path]:
    """Optuna's plots of the rebuilt study and the top trials' validation curves, logged under ``report/``."""
    from search.review import plots  # matplotlib: ~1.5 s of imports, paid only by a process that draws

    metric = cfg.search.metric
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        written = plots.optuna_plots(review_study(cfg, runs), directory)
        histories, stopped = _top_curves(client, board, metric)
        if histories:
            written.append(plots.validation_curves(histories, stopped, metric, directory / "validation_curves.png"))
        if written:
            client.log_artifacts(parent.info.run_id, str(directory), artifact_path="report")
    return written


def write_front(client: MlflowClient, run_id: str, board: pd.DataFrame, cfg: HpsConfig, draw: bool = True) -> list[str]:
    """A two-objective search's Pareto front on its parent run: ``pareto_front.csv`` (the members) and, with
    ``draw``, ``report/pareto_front.png`` (every trial, the front marked); returns the names written."""
    objectives = cfg.search.objective_pairs
    if len(objectives) < 2 or board.empty or FRONT_COLUMN not in board:
        return []
    log_table(client, run_id, front_table(board, objectives), "pareto_front.csv")
    if not draw:
        return ["pareto_front.csv"]
    from search.review import plots

    with tempfile.TemporaryDirectory() as tmp:
        columns = objective_columns(objectives)
        usable = board[board["outcome"] != "failed"]
        path = plots.pareto_front(usable[columns[0]].to_numpy(float), usable[columns[1]].to_numpy(float),
                                  usable[FRONT_COLUMN].to_numpy(bool), columns, Path(tmp) / "pareto_front.png")
        client.log_artifact(run_id, str(path), artifact_path="report")
    return ["pareto_front.csv", path.name]


def _top_curves(client: MlflowClient, board: pd.DataFrame, metric: str) -> tuple[dict, set[str]]:
    """The per-epoch ``metric`` of the best trials that did not fail, by trial; which of them ASHA stopped early."""
    if board.empty:  # no trial was recorded: the board has no columns
        return {}, set()
    top = board[board["outcome"] != "failed"].head(TOP_CURVES)
    histories = {
        row["trial"]: [(m.step, m.value) for m in client.get_metric_history(row["run_id"], metric)]
        for _, row in top.iterrows()
    }
    return histories, set(top.loc[top["outcome"].isin(["stopped_early", "stopped_no_improvement"]), "trial"])


def log_table(client: MlflowClient, run_id: str, frame: pd.DataFrame, name: str) -> None:
    """Attach a pandas DataFrame to a run as a CSV artifact."""
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, name)
        frame.to_csv(path, index=False)
        client.log_artifact(run_id, path)
