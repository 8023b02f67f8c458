"""A search's MLflow records made by hand, as `hps run` leaves them (parent run, one child per trial), without
training: for the reading side's fast tests (leaderboard, report, predict, registry)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from mlflow.tracking import MlflowClient

from trainables.checkpoint import load_model, save_model
from trainables.data import Preprocessor
from trainables.model import Architecture, build_mlp
from trainables.predict import predict_frame


@dataclass
class Trial:
    """One trial's record: its validation curve (val_loss by epoch), params and how it ended."""

    name: str
    losses: list[float]
    params: dict
    outcome: str = "finished"


@dataclass
class Recorded:
    client: MlflowClient
    uri: str
    parent: str  # run id of the search's parent run
    trials: dict[str, str]  # trial name -> run id


def sqlite_uri(folder: Path) -> str:
    """A tracking database in ``folder``; the artifacts of searches recorded there go beside it."""
    return f"sqlite:///{folder / 'mlruns.db'}"


def record_search(uri: str, name: str, trials: list[Trial], config: dict | None = None, tags: dict | None = None,
                  ) -> Recorded:
    """A parent run tagged as a search ranked by val_loss (min), and a child run per trial with its metric history,
    best value, params and outcome; ``config`` is stored as the parent's config.yaml."""
    client = MlflowClient(uri)
    # Artifacts beside the database (MLflow's default is a folder in the current directory).
    artifacts = Path(uri.removeprefix("sqlite:///")).parent / "artifacts"
    experiment = client.create_experiment(name, artifact_location=artifacts.as_uri())
    parent = client.create_run(experiment, run_name=name, tags={
        "hps.search": name, "hps.role": "search", "hps.metric": "val_loss", "hps.mode": "min", **(tags or {})})
    parent_id = parent.info.run_id
    if config is not None:
        client.log_text(parent_id, yaml.safe_dump(config), "config.yaml")
    ids = {}
    for trial in trials:
        run = client.create_run(experiment, run_name=trial.name, tags={
            "mlflow.parentRunId": parent_id, "hps.search": name, "hps.role": "trial", "hps.trial_id": trial.name,
            "hps.outcome": trial.outcome, "hps.last_epoch": str(len(trial.losses))})
        run_id = run.info.run_id
        for epoch, loss in enumerate(trial.losses, start=1):
            client.log_metric(run_id, "val_loss", loss, step=epoch)
        best = int(np.argmin(trial.losses))
        client.log_metric(run_id, "best_val_loss", trial.losses[best])
        client.log_metric(run_id, "best_epoch", best + 1)
        for key, value in trial.params.items():
            client.log_param(run_id, key, value)
        client.set_terminated(run_id, "FAILED" if trial.outcome == "failed" else "FINISHED")
        ids[trial.name] = run_id
    client.set_terminated(parent_id, "FINISHED")
    return Recorded(client, uri, parent_id, ids)


def regression_rows(n: int = 40, seed: int = 0) -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(seed)
    rows = pd.DataFrame({"x1": rng.normal(size=n), "x2": rng.normal(size=n)})
    return rows, pd.Series(rows["x1"] * 2 + rows["x2"], name="y")


def save_regressor(folder: Path, rows: pd.DataFrame, target: pd.Series, seed: int) -> Path:
    """An untrained (randomly initialised) regression MLP saved as a model folder, with its fitted preprocessing."""
    prep = Preprocessor.fit(rows, target, "regression")
    arch = Architecture(n_features=rows.shape[1], n_outputs=1, hidden=(4,))
    torch.manual_seed(seed)
    save_model(folder, build_mlp(arch).state_dict(),
               {"architecture": arch.to_dict(), "preprocessor": prep.to_dict(), "params": {}, "epoch": 1})
    return folder


def predictions_of(folder: Path, rows: pd.DataFrame) -> np.ndarray:
    """What the model saved in ``folder`` predicts for ``rows`` (the ``prediction`` column)."""
    model, description = load_model(folder)
    return predict_frame(model, Preprocessor.from_dict(description["preprocessor"]), rows)["prediction"].to_numpy()
