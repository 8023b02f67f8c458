"""``hps evaluate``: the best trial by validation (or the mean of the best few) tested once on the held-out split.

The test split is re-created from the config recorded on the search's parent run and checked against the
recorded split fingerprint; a second evaluation of the same search is refused unless forced, and every use of
the test set is recorded on the parent run. The tested model is then registered (:mod:`search.review.registry`).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.entities import Metric, Run, RunTag
from mlflow.tracking import MlflowClient

from search.config.dataset import split_from_config
from search.config.pareto import OBJECTIVES_TAG, parse_objectives
from search.config.pareto import pick as pick_from_front
from search.config.schema import HpsConfig, check_members_have_models, check_registered_name
from search.errors import AlreadyEvaluated, ModelNotFound
from search.records.connection import connect
from search.records.inputs import log_datasets, split_datasets
from search.records.leaderboard import find_search_run, leaderboard, recorded_config
from search.records.logged_models import LOGGED_MODEL_TAG
from search.review import plots
from search.review.registry import register_champion
from trainables.checkpoint import DESCRIPTION_FILE, load_model, save_ensemble, save_model
from trainables.data import DataError, Preprocessor, TrialData
from trainables.device import local_device
from trainables.metrics import metric_mode
from trainables.model import Architecture
from trainables.network import CustomArchitecture
from trainables.predict import model_outputs, probabilities, regression_values
from trainables.test_metrics import classification_report_metrics, regression_report_metrics
from trainables.train import fold_std_name, train_epochs

EVALUATED_MODEL = "evaluated_model"  # the parent run's copy of the model `hps evaluate` tested


@dataclass
class Evaluation:
    """What `hps evaluate` did: which trial(s), their validation selection, test metrics, the registered version.

    ``trial_id``/``run_id``/``epoch`` are the best trial's; with ``top_k`` > 1 the evaluated model is the average of
    ``members`` (best first), and ``trial_id`` lists them all.
    """

    search: str
    trial_id: str
    run_id: str
    epoch: int
    selection: str
    n_test: int
    metrics: dict[str, float]
    metric: str = ""  # the validation metric the members were chosen by (each member records its value)
    members: list[dict] = field(default_factory=list)
    n_refit: int = 0  # rows the members were retrained on before the test (0: evaluated as trained)
    top_k: int = 1  # how many members were asked for (fewer trials may have finished with a model)
    registered: str = ""
    artifacts: list[str] = field(default_factory=list)

    @property
    def refit(self) -> bool:
        """Whether the members were retrained on train + validation before the test."""
        return self.n_refit > 0

    @classmethod
    def of(cls, search: str, members: list[dict], metric: str, top_k: int, n_refit: int, n_test: int,
           metrics: dict[str, float]) -> Evaluation:
        """The evaluation of ``members`` (best first), before it is recorded and registered."""
        best = members[0]
        return cls(search=search, trial_id=",".join(m["trial"] for m in members), run_id=best["run_id"],
                   epoch=best["epoch"], selection=_describe_selection(members, metric, n_refit), n_test=n_test,
                   metrics=metrics, metric=metric, members=members, n_refit=n_refit, top_k=top_k)


def choose_trials(board: pd.DataFrame, metric: str, k: int = 1) -> pd.DataFrame:
    """The ``k`` best trials (fewer if fewer finished) by ``metric`` at their kept (best-validation) epoch."""
    column = metric if metric in board.columns else f"best_{metric}"
    if column not in board.columns:
        raise DataError(f"metric {metric!r} was not recorded for this search")
    usable = board[(board["outcome"] != "failed") & board[column].notna()]
    if usable.empty:
        raise ModelNotFound("no trial of this search finished with a usable result")
    return usable.sort_values(column, ascending=metric_mode(metric) == "min", kind="stable").head(k)


def evaluate_search(
    tracking_uri: str, name: str, metric: str | None = None, force: bool = False, register_as: str | None = None,
    top_k: int | None = None, refit: bool | None = None, pick: str | None = None,
) -> Evaluation:
    """Evaluate the best trial of search ``name`` (or the average of its ``top_k`` best; each retrained on train +
    validation first with ``refit``) on its test split, log the results on the search's parent run and register
    the evaluated model. ``top_k``/``refit`` default to the search config's ``evaluate`` section. ``pick``
    (two-objective searches) chooses the member of the Pareto front by a rule of :func:`search.config.pareto.pick`."""
    _check_arguments(top_k, register_as)
    client = connect(tracking_uri, existing=True)
    parent = find_search_run(client, name)
    _refuse_a_second_use(parent, name, force)
    cfg = recorded_config(client, parent)
    metric, top_k, refit = _settle_request(cfg, parent, name, metric, top_k, refit)
    chosen = _picked(leaderboard(client, parent), parent, pick, top_k) if pick else choose_trials(
        leaderboard(client, parent), metric, top_k)
    split = split_from_config(cfg)
    _check_same_split(split.fingerprint, parent)
    with tempfile.TemporaryDirectory() as tmp:
        refit_data = split.refit_data() if refit else None
        model_dir, members = _evaluated_model(client, chosen, metric, Path(tmp), refit_data,
                                              _retrainer(cfg) if refit_data is not None else None)
        model, description = load_model(model_dir)
        prep = Preprocessor.from_dict(description["preprocessor"])
        rows, target = split.test_rows()
        out_dir = Path(tmp) / "test"
        out_dir.mkdir()
        n_refit = 0 if refit_data is None else len(refit_data.x_train)
        evaluation = Evaluation.of(name, members, metric, top_k, n_refit, len(rows),
                                   _test(model, prep, rows, target, out_dir))
        if pick:
            evaluation.selection += f" (picked from the Pareto front by {pick})"
        _record_use(client, parent, evaluation, force, out_dir, model_dir)
        evaluation.artifacts = sorted(p.name for p in out_dir.iterdir())
        # The test rows are an input of the search now, once: the Datasets section says so (context "test").
        log_datasets(client, parent.info.run_id, split_datasets(split, cfg.data.source, parts=("test",)))
        evaluation.registered = register_champion(
            client, tracking_uri, parent, model_dir, prep, rows, model, register_as or cfg.tracking.registered_model or name,
            source_models=_logged_models_of(client, members),
        )
    return evaluation


def _logged_models_of(client, members: list[dict]) -> list[str]:
    """The LoggedModels (``models:/<id>``) the evaluated model came from: each member trial's, best first (trials
    uploaded before LoggedModels have none)."""
    ids = [client.get_run(m["run_id"]).data.tags.get(LOGGED_MODEL_TAG) for m in members]
    return [model_id for model_id in ids if model_id]


def _picked(board: pd.DataFrame, parent: Run, rule: str, top_k: int) -> pd.DataFrame:
    """The one trial ``--pick rule`` chooses from the search's Pareto front."""
    if top_k > 1:
        raise DataError(f"--pick chooses one trial; it cannot go with a top_k of {top_k} (pass --top-k 1)")
    row = pick_from_front(board, parse_objectives(parent.data.tags.get(OBJECTIVES_TAG)), rule)
    return board.loc[[row.name]]


def _check_arguments(top_k: int | None, register_as: str | None) -> None:
    """The command line's own values, checked before the tracking store is opened."""
    if top_k is not None and top_k < 1:
        raise DataError(f"--top-k must be >= 1, got {top_k}")
    if register_as is not None:
        try:
            check_registered_name(register_as)
        except ValueError as exc:
            raise DataError(f"--register-as: {exc}") from None


def _refuse_a_second_use(parent: Run, name: str, force: bool) -> None:
    """The test set is used once: a search already evaluated is refused unless ``force``."""
    tags = parent.data.tags
    if tags.get("hps.test_evaluated_at") and not force:
        raise AlreadyEvaluated(
            f"search {name!r} was already evaluated on the test set at {tags['hps.test_evaluated_at']} "
            f"(trial {tags.get('hps.test_trial_id')}: {tags.get('hps.test_summary')}); "
            "the test set is used once — pass --force to evaluate again (it will be recorded)"
        )


def _settle_request(
    cfg: HpsConfig, parent: Run, name: str, metric: str | None, top_k: int | None, refit: bool | None,
) -> tuple[str, int, bool]:
    """The metric, member count and refit to evaluate with: the given ones, else the search's (its config's
    ``evaluate`` section); refused where the search cannot honour them."""
    refit = cfg.evaluate.refit if refit is None else refit
    if not refit and cfg.data.split.folds:
        raise DataError(f"search {name!r} cross-validated ({cfg.data.split.folds} folds): each trial's model saw only "
                        "part of the development rows, so what is tested must be refit on all of them; drop --no-refit")
    metric = metric or parent.data.tags.get("hps.metric", cfg.search.metric)
    top_k = top_k or cfg.evaluate.top_k
    try:
        check_members_have_models(top_k, cfg.tracking.log_models, "--top-k")
    except ValueError as exc:
        raise DataError(str(exc)) from None
    return metric, top_k, refit


def _check_same_split(fingerprint: str, parent: Run) -> None:
    """The re-created split must be the one the search ran on, or its test rows are not the held-out ones."""
    recorded = parent.data.tags.get("hps.split_fingerprint")
    if fingerprint != recorded:
        raise DataError(
            f"the data or its split changed since the search (fingerprint {fingerprint} != recorded "
            f"{recorded}); refusing to evaluate on a different test set"
        )


def _test(model, prep: Preprocessor, rows: pd.DataFrame, target: pd.Series, out_dir: Path) -> dict[str, float]:
    """The test metrics of ``model`` on the test rows; its diagnostic plots (and per-class table) into ``out_dir``."""
    outputs = model_outputs(model, prep.transform_features(rows))
    if prep.task == "regression":
        actual: np.ndarray = target.to_numpy(dtype=float)
        values = regression_values(outputs, prep)
        plots.regression_diagnostics(actual, values, out_dir / "predicted_vs_actual.png")
        return regression_report_metrics(actual, values)
    probs = probabilities(outputs, prep.task)
    y_true = prep.transform_target(target)
    plots.confusion_matrix(y_true, probs.argmax(axis=1), prep.classes, out_dir / "confusion_matrix.png")
    plots.per_class_report(y_true, probs.argmax(axis=1), prep.classes).to_csv(out_dir / "per_class_report.csv")
    return classification_report_metrics(y_true, probs, prep.task)


def _evaluated_model(
    client: MlflowClient, chosen: pd.DataFrame, metric: str, tmp: Path, refit_data: TrialData | None,
    retrain: Retrain | None,
) -> tuple[Path, list[dict]]:
    """Download the chosen trials' models (retrained on ``refit_data`` if given); one model folder as it is,
    several as an ensemble folder.

    Returns the folder and a record per member (trial, run, kept epoch, its validation value), best first.
    """
    members, folders, preprocessors = [], [], []
    for index, (_, row) in enumerate(chosen.iterrows()):
        try:
            folder = Path(client.download_artifacts(row["run_id"], "model", str(tmp / f"download_{index}")))
        except Exception as exc:  # noqa: BLE001 - any download failure means the same thing to the user
            raise ModelNotFound(f"trial {row['trial']} has no model artifact ({exc}); was log_models none?") from None
        description = json.loads((folder / DESCRIPTION_FILE).read_text())
        if refit_data is not None and retrain is not None:
            folder, description = _refit(row["trial"], description, refit_data, retrain, tmp / f"refit_{index}")
        preprocessors.append(description["preprocessor"])
        folders.append(folder)
        member = {"trial": row["trial"], "run_id": row["run_id"], "epoch": int(row["best_epoch"]),
                  metric: float(row[metric if metric in row else f"best_{metric}"])}
        spread = row.get(fold_std_name(metric))
        if spread is not None and not pd.isna(spread):  # a cross-validated trial: its folds' disagreement
            member[fold_std_name(metric)] = float(spread)
        members.append(member)
    if len(folders) == 1:
        return folders[0], members
    # Every trial of a search trains on the same split with the same fitted preprocessing; averaging models that
    # disagree on it would silently mix feature encodings.
    if any(p != preprocessors[0] for p in preprocessors[1:]):
        raise DataError("the chosen trials were trained with different preprocessing; evaluate with --top-k 1")
    ensemble_dir = tmp / "ensemble"
    save_ensemble(ensemble_dir, folders, {"preprocessor": preprocessors[0], "members": members})
    return ensemble_dir, members


# Retrains a configuration: (params, data, epochs, network=...) -> (architecture, weights), as train_epochs with its
# settings bound.
Retrain = Callable[..., tuple[Architecture | CustomArchitecture, dict]]


def _retrainer(cfg: HpsConfig) -> Retrain:
    """Refit trains the way the search's trials trained: same seed rule, same kind of device (a GPU only when the
    trials had one and this machine has one too, set up as the trials' were: TF32, AMP as configured)."""
    device = local_device(cfg.resources.gpus_per_trial)
    return functools.partial(train_epochs, base_seed=cfg.training_seed, device=device, amp=cfg.training.amp)


def _refit(trial: str, description: dict, data: TrialData, retrain: Retrain, folder: Path) -> tuple[Path, dict]:
    """Retrain a trial's configuration on ``data`` for its kept epoch count; save it as a model folder."""
    epochs = max(1, int(description.get("epoch", 1)))
    try:
        # A user's network retrains from the code its trial trained with (recorded in the model's description).
        arch, weights = retrain(description["params"], data, epochs,
                                network=description["architecture"].get("network"))
    except FloatingPointError as exc:
        raise ModelNotFound(
            f"retraining trial {trial} on train+validation failed ({exc}); evaluate with --no-refit") from None
    refitted = {"architecture": arch.to_dict(), "preprocessor": data.preprocessor, "params": description["params"],
                "epoch": epochs, "refit": {"trial": trial, "rows": len(data.x_train)}}
    save_model(folder, weights, refitted)
    return folder, refitted


def describe_member_value(member: dict, metric: str) -> str:
    """``1.9 at epoch 12``, or ``1.9 (sd 0.12 over folds) at epoch 12`` for a cross-validated trial."""
    spread = member.get(fold_std_name(metric))
    shown = f"{member[metric]:.6g}" if spread is None else f"{member[metric]:.6g} (sd {spread:.2g} over folds)"
    return f"{shown} at epoch {member['epoch']}"


def _describe_selection(members: list[dict], metric: str, n_refit: int = 0) -> str:
    """``trial: val_mae 1.9 at epoch 12``, or ``mean of the top 3 trials by val_mae: a (1.9 at epoch 12), ...``."""
    refit = f", retrained on train+validation ({n_refit} rows) for that many epochs" if n_refit else ""
    if len(members) == 1:
        return f"{members[0]['trial']}: {metric} {describe_member_value(members[0], metric)}{refit}"
    listed = ", ".join(f"{m['trial']} ({describe_member_value(m, metric)})" for m in members)
    return f"mean of the top {len(members)} trials by {metric}: {listed}{refit}"


def _record_use(client: MlflowClient, parent: Run, ev: Evaluation, forced: bool, out_dir: Path, model_dir: Path,
                ) -> None:
    """Log test metrics (step = use number), tags naming what was evaluated, plots, a record of this use, and a copy
    of the tested model (what `hps predict NAME` uses)."""
    use = int(parent.data.tags.get("hps.test_uses", "0")) + 1
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    main = next((k for k in ("test_accuracy", "test_mae") if k in ev.metrics), next(iter(ev.metrics)))
    summary = f"{main}={ev.metrics[main]:.4g}"
    record = {"use": use, "at": now, "forced": forced, "trial_id": ev.trial_id, "run_id": ev.run_id,
              "epoch": ev.epoch, "selection": ev.selection, "members": ev.members, "refit": ev.refit,
              "n_test": ev.n_test, "metrics": ev.metrics}
    (out_dir / f"evaluation_{use}.json").write_text(json.dumps(record, indent=2))
    stamp = int(dt.datetime.now().timestamp() * 1000)
    client.log_batch(
        parent.info.run_id,
        metrics=[Metric(k, v, stamp, use) for k, v in ev.metrics.items()],
        tags=[RunTag(k, str(v)) for k, v in {
            "hps.test_evaluated_at": now, "hps.test_uses": use, "hps.test_trial_id": ev.trial_id,
            "hps.test_run_id": ev.run_id, "hps.test_epoch": ev.epoch, "hps.test_selection": ev.selection,
            "hps.test_top_k": len(ev.members), "hps.test_refit": ev.refit,
            "hps.test_summary": summary,
        }.items()],
    )
    client.log_artifacts(parent.info.run_id, str(out_dir), artifact_path="test")
    client.log_artifacts(parent.info.run_id, str(model_dir), artifact_path=EVALUATED_MODEL)
