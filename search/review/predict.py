"""``hps predict``: rows of a CSV predicted by a registered model, a run's model or a search's tested model, written
whole to a CSV."""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from search.errors import ModelNotFound
from search.records.connection import connect, fluent_uris
from search.records.leaderboard import find_search_run
from search.review.evaluate import EVALUATED_MODEL
from trainables.checkpoint import DESCRIPTION_FILE, load_model
from trainables.data import DataError, Preprocessor
from trainables.predict import predict_frame


def predict_file(tracking_uri: str, reference: str, input_csv: str, output_csv: str) -> int:
    """Predict every row of ``input_csv`` with a model and write ``output_csv``; returns the row count."""
    rows = read_rows(input_csv, output_csv)
    client = connect(tracking_uri, existing=True)
    with tempfile.TemporaryDirectory() as tmp:
        model, prep = resolve_model(client, reference, tmp)
    predictions = predict_frame(model, prep, rows)
    _write_whole(predictions, Path(output_csv))
    return len(predictions)


def read_rows(input_csv: str, output_csv: str) -> pd.DataFrame:
    """The rows to predict, once it is clear the predictions can be written: unusable files fail before any model
    is fetched."""
    if not Path(input_csv).is_file():
        raise DataError(f"input file {input_csv!r} does not exist")
    if not Path(output_csv).resolve().parent.is_dir():
        raise DataError(f"cannot write {output_csv!r}: folder {str(Path(output_csv).parent)!r} does not exist")
    try:
        rows = pd.read_csv(input_csv)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {input_csv!r} as CSV: {str(exc).splitlines()[0]}") from None
    if rows.empty:
        raise DataError(f"{input_csv!r} has a header but no rows to predict")
    return rows


def resolve_model(client: MlflowClient, reference: str, directory: str) -> tuple:
    """Download and rebuild a model from ``models:/NAME@alias``, ``runs:/ID/PATH`` or a search name (the model
    `hps evaluate` tested, or before that the best trial's).

    Only the JSON description and the weights are read (``weights_only=True``): nothing from the artifact store
    is unpickled, and nothing is executed except, for a search of the user's own network, that network's builder
    code recorded with the model (docs/networks.md). ``models:/`` and ``runs:/`` resolve against the client's
    server and its registry.
    """
    if reference.startswith(("models:/", "runs:/")):
        try:
            with fluent_uris(client.tracking_uri):
                local = mlflow.artifacts.download_artifacts(artifact_uri=reference, dst_path=directory)
        except MlflowException as exc:
            raise ModelNotFound(f"{reference}: {exc.message.splitlines()[0]}") from None
    else:
        local = _search_model(client, reference, directory)
    found = sorted(Path(local).rglob(DESCRIPTION_FILE))
    if not found:
        raise ModelNotFound(f"{reference} holds no hps model ({DESCRIPTION_FILE} not found)")
    # The outermost description is the model; deeper ones are an ensemble's members.
    model, description = load_model(min(found, key=lambda path: len(path.parts)).parent)
    return model, Preprocessor.from_dict(description["preprocessor"])


def _search_model(client: MlflowClient, name: str, directory: str) -> str:
    """A search's model: the one `hps evaluate` tested (its copy on the parent run), or, for a search never
    evaluated, its best trial's. Never a different model than the one tested: if that copy cannot be fetched,
    this fails (one line) rather than predicting with, say, the best trial's raw model in place of a refit or an
    ensemble."""
    parent = find_search_run(client, name)
    tags, parent_id = parent.data.tags, parent.info.run_id
    if tags.get("hps.test_evaluated_at"):
        try:
            names = {Path(a.path).name for a in client.list_artifacts(parent_id)}
            if EVALUATED_MODEL in names:
                return client.download_artifacts(parent_id, EVALUATED_MODEL, directory)
        except Exception as exc:  # noqa: BLE001 - any failure to fetch it means the same to the user
            raise ModelNotFound(f"search {name!r}: could not fetch the model `hps evaluate` tested "
                                f"({EVALUATED_MODEL} on run {parent_id}): {_first_line(exc)}") from None
        # No copy on the parent (evaluated before it was kept, or the evaluation stopped before storing it): only a
        # single trial evaluated as trained is exactly its trial's model; anything else cannot be rebuilt here.
        if tags.get("hps.test_top_k", "1") != "1" or tags.get("hps.test_refit", "False") != "False" \
                or not tags.get("hps.test_run_id"):
            raise ModelNotFound(f"search {name!r}: the model `hps evaluate` tested ({tags.get('hps.test_selection')}) "
                                f"is not on run {parent_id}; evaluate again with --force to store it")
        run_id, what = tags["hps.test_run_id"], "the evaluated trial"
    else:
        run_id, what = tags.get("hps.best_run_id"), "its best trial"
    if not run_id:
        raise ModelNotFound(f"search {name!r} has no best trial with a model")
    try:
        return client.download_artifacts(run_id, "model", directory)
    except Exception as exc:  # noqa: BLE001
        raise ModelNotFound(f"search {name!r}: {what} has no model artifact (was tracking.log_models none?) or "
                            f"it cannot be fetched from run {run_id}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return text.strip().splitlines()[0][:300] if text.strip() else type(exc).__name__


def _write_whole(frame: pd.DataFrame, path: Path) -> None:
    """Write a CSV under a temporary name and rename it: an interrupted write never leaves a partial file at
    ``path`` to be taken for results."""
    partial = path.with_name(f".{path.name}.partial")
    try:
        frame.to_csv(partial, index=False)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
