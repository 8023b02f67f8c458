"""The final step: pick the best trial by validation, evaluate it once on the held-out test split, register it.

The test split is re-created from the config recorded on the search's parent run and checked against the
recorded split fingerprint; a second evaluation of the same search is refused unless forced, and every use of
the test set is recorded on the parent run.
"""

from __future__ import annotations

import datetime as dt
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.entities import Metric, Run, RunTag
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from search import plots
from search.config import parse_config
from search.dataset import split_from_config
from search.errors import AlreadyEvaluated, ModelNotFound
from search.leaderboard import find_search_run, leaderboard
from trainables.checkpoint import DESCRIPTION_FILE, load_model
from trainables.data import DataError, Preprocessor
from trainables.metrics import classification_report_metrics, metric_mode, regression_report_metrics
from trainables.predict import model_outputs, predict_frame, probabilities, regression_values

CHAMPION = "champion"
SERVING_CODE = Path(__file__).with_name("serving.py")
TRAINABLES_DIR = Path(__file__).resolve().parent.parent / "trainables"


@dataclass
class Evaluation:
    """What `hps evaluate` did: which trial, its validation selection, test metrics, the registered version."""

    search: str
    trial_id: str
    run_id: str
    epoch: int
    selection: str
    n_test: int
    metrics: dict[str, float]
    registered: str = ""
    artifacts: list[str] = field(default_factory=list)


def recorded_config(client: MlflowClient, parent: Run):
    """The resolved config the search ran with (its `config.yaml` artifact)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(parent.info.run_id, "config.yaml", tmp)
        import yaml

        return parse_config(yaml.safe_load(Path(path).read_text()))


def choose_trial(board: pd.DataFrame, metric: str) -> pd.Series:
    """The best trial with a model by ``metric`` at its kept (best-validation) epoch."""
    column = metric if metric in board.columns else f"best_{metric}"
    if column not in board.columns:
        raise DataError(f"metric {metric!r} was not recorded for this search")
    usable = board[(board["outcome"] != "failed") & board[column].notna()]
    if usable.empty:
        raise ModelNotFound("no trial of this search finished with a usable result")
    return usable.sort_values(column, ascending=metric_mode(metric) == "min", kind="stable").iloc[0]


def evaluate_search(
    tracking_uri: str, name: str, metric: str | None = None, force: bool = False, register_as: str | None = None
) -> Evaluation:
    """Evaluate the best trial of search ``name`` on its test split, log the results, register the model."""
    client = MlflowClient(tracking_uri)
    parent = find_search_run(client, name)
    tags = parent.data.tags
    if tags.get("hps.test_evaluated_at") and not force:
        raise AlreadyEvaluated(
            f"search {name!r} was already evaluated on the test set at {tags['hps.test_evaluated_at']} "
            f"(trial {tags.get('hps.test_trial_id')}: {tags.get('hps.test_summary')}); "
            "the test set is used once — pass --force to evaluate again (it will be recorded)"
        )
    cfg = recorded_config(client, parent)
    metric = metric or tags.get("hps.metric", cfg.search.metric)
    chosen = choose_trial(leaderboard(client, parent), metric)

    split = split_from_config(cfg)
    if split.fingerprint != tags.get("hps.split_fingerprint"):
        raise DataError(
            f"the data or its split changed since the search (fingerprint {split.fingerprint} != recorded "
            f"{tags.get('hps.split_fingerprint')}); refusing to evaluate on a different test set"
        )
    with tempfile.TemporaryDirectory() as tmp:
        try:
            model_dir = client.download_artifacts(chosen["run_id"], "model", tmp)
        except Exception as exc:  # noqa: BLE001 - any download failure means the same thing to the user
            raise ModelNotFound(f"trial {chosen['trial']} has no model artifact ({exc}); was log_models none?") from None
        model, description = load_model(model_dir)
        prep = Preprocessor.from_dict(description["preprocessor"])
        rows, target = split.test_rows()
        outputs = model_outputs(model, prep.transform_features(rows))
        out_dir = Path(tmp) / "test"
        out_dir.mkdir()
        if prep.task == "regression":
            values = regression_values(outputs, prep)
            metrics = regression_report_metrics(target.to_numpy(dtype=float), values)
            plots.regression_diagnostics(target.to_numpy(dtype=float), values, out_dir / "predicted_vs_actual.png")
        else:
            probs = probabilities(outputs, prep.task)
            y_true = prep.transform_target(target)
            metrics = classification_report_metrics(y_true, probs, prep.task)
            plots.confusion_matrix(y_true, probs.argmax(axis=1), prep.classes, out_dir / "confusion_matrix.png")
            plots.per_class_report(y_true, probs.argmax(axis=1), prep.classes).to_csv(out_dir / "per_class_report.csv")

        search_metric = tags.get("hps.metric", cfg.search.metric)
        selection = (
            f"{chosen['trial']}: best {search_metric} {chosen[f'best_{search_metric}']:.6g} "
            f"at epoch {int(chosen['best_epoch'])}"
        )
        evaluation = Evaluation(
            search=name, trial_id=chosen["trial"], run_id=chosen["run_id"], epoch=int(chosen["best_epoch"]),
            selection=selection, n_test=len(rows), metrics=metrics,
        )
        use = int(tags.get("hps.test_uses", "0")) + 1
        _record_use(client, parent, evaluation, use, force, out_dir)
        evaluation.artifacts = sorted(p.name for p in out_dir.iterdir())
        evaluation.registered = register_champion(
            client, tracking_uri, parent, Path(model_dir), prep, rows, model, register_as or cfg.tracking.registered_model or name
        )
    return evaluation


def _record_use(client: MlflowClient, parent: Run, ev: Evaluation, use: int, forced: bool, out_dir: Path) -> None:
    """Log test metrics (step = use number), tags naming what was evaluated, plots, and a record of this use."""
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    main = next((k for k in ("test_accuracy", "test_mae") if k in ev.metrics), next(iter(ev.metrics)))
    summary = f"{main}={ev.metrics[main]:.4g}"
    record = {"use": use, "at": now, "forced": forced, "trial_id": ev.trial_id, "run_id": ev.run_id,
              "epoch": ev.epoch, "selection": ev.selection, "n_test": ev.n_test, "metrics": ev.metrics}
    (out_dir / f"evaluation_{use}.json").write_text(json.dumps(record, indent=2))
    stamp = int(dt.datetime.now().timestamp() * 1000)
    client.log_batch(
        parent.info.run_id,
        metrics=[Metric(k, v, stamp, use) for k, v in ev.metrics.items()],
        tags=[RunTag(k, str(v)) for k, v in {
            "hps.test_evaluated_at": now, "hps.test_uses": use, "hps.test_trial_id": ev.trial_id,
            "hps.test_run_id": ev.run_id, "hps.test_epoch": ev.epoch, "hps.test_selection": ev.selection,
            "hps.test_summary": summary,
        }.items()],
    )
    client.log_artifacts(parent.info.run_id, str(out_dir), artifact_path="test")


def register_champion(
    client: MlflowClient, tracking_uri: str, parent: Run, model_dir: Path, prep: Preprocessor,
    rows: pd.DataFrame, model, registered_name: str,
) -> str:
    """Log the evaluated model as an MLflow pyfunc (signature + input example) on the parent run, register it,
    and point the ``champion`` alias at the new version. Returns the ``models:/NAME@champion`` URI."""
    example = rows.head(5).reset_index(drop=True)
    # The saved preprocessing imputes every numeric column, so gaps are legal input: integer columns are declared
    # as doubles, which (unlike integers) can hold NaN under MLflow's schema enforcement.
    example = example.astype({column: "float64" for column in example.select_dtypes("integer").columns})
    signature = infer_signature(example, predict_frame(model, prep, example))
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    status = parent.info.status
    try:
        with mlflow.start_run(run_id=parent.info.run_id):
            info = mlflow.pyfunc.log_model(
                name="champion_model",
                python_model=str(SERVING_CODE),
                artifacts={"model": str(model_dir)},
                code_paths=[str(TRAINABLES_DIR)],
                signature=signature,
                input_example=example,
                # Listing requirements skips MLflow's slow environment inference.
                pip_requirements=[f"torch=={_version('torch')}", f"pandas=={_version('pandas')}",
                                  f"numpy=={_version('numpy')}", f"scikit-learn=={_version('sklearn')}"],
            )
    finally:
        client.set_terminated(parent.info.run_id, status)  # resuming the parent must not change how it ended
    version = mlflow.register_model(info.model_uri, registered_name)
    client.set_registered_model_alias(registered_name, CHAMPION, version.version)
    client.set_model_version_tag(registered_name, version.version, "hps.search", parent.data.tags.get("hps.search", ""))
    return f"models:/{registered_name}@{CHAMPION}"


def _version(module: str) -> str:
    import importlib

    return importlib.import_module(module).__version__.split("+")[0]


def resolve_model(client: MlflowClient, reference: str, directory: str) -> tuple:
    """Download and rebuild a model from ``models:/NAME@alias``, ``runs:/ID/PATH`` or a search name.

    Only the JSON description and the weights are read (``weights_only=True``): nothing from the artifact store
    is executed or unpickled.
    """
    if reference.startswith(("models:/", "runs:/")):
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=reference, dst_path=directory)
        except MlflowException as exc:
            raise ModelNotFound(f"{reference}: {exc.message.splitlines()[0]}") from None
    else:
        parent = find_search_run(client, reference)
        run_id = parent.data.tags.get("hps.test_run_id") or parent.data.tags.get("hps.best_run_id")
        if not run_id:
            raise ModelNotFound(f"search {reference!r} has no best trial with a model")
        local = client.download_artifacts(run_id, "model", directory)
    found = sorted(Path(local).rglob(DESCRIPTION_FILE))
    if not found:
        raise ModelNotFound(f"{reference} holds no hps model ({DESCRIPTION_FILE} not found)")
    model, description = load_model(found[0].parent)
    return model, Preprocessor.from_dict(description["preprocessor"])


def predict_file(tracking_uri: str, reference: str, input_csv: str, output_csv: str) -> int:
    """Predict every row of ``input_csv`` with a model and write ``output_csv``; returns the row count."""
    if not Path(input_csv).is_file():
        raise DataError(f"input file {input_csv!r} does not exist")
    rows = pd.read_csv(input_csv)
    mlflow.set_tracking_uri(tracking_uri)  # models:/ and runs:/ URIs resolve against this server and its registry
    mlflow.set_registry_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        model, prep = resolve_model(client, reference, tmp)
    predictions = predict_frame(model, prep, rows)
    predictions.to_csv(output_csv, index=False)
    return len(predictions)


