"""The champion in MLflow's Model Registry: the evaluated model logged as a pyfunc on the search's parent run,
registered as a new version that the ``champion`` alias points at."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
from mlflow.entities import Run
from mlflow.models import ModelSignature, infer_signature
from mlflow.tracking import MlflowClient

from search.records.connection import fluent_uris
from search.records.logged_models import SERVING_CODE, TRAINABLES_DIR, pip_requirements
from trainables.data import Preprocessor
from trainables.predict import predict_frame

CHAMPION = "champion"
SOURCE_MODELS_TAG = "hps.source_model_ids"  # on a registered version: the LoggedModels of the trials it came from


def register_champion(
    client: MlflowClient, tracking_uri: str, parent: Run, model_dir: Path, prep: Preprocessor,
    rows: pd.DataFrame, model, registered_name: str, source_models: list[str] | None = None,
) -> str:
    """Log the evaluated model as an MLflow pyfunc (signature + input example) on the parent run, register it,
    and point the ``champion`` alias at the new version, tagged with the trials' LoggedModels it came from
    (``source_models``: one, or the members of a top-k mean). Returns the ``models:/NAME@champion`` URI."""
    example = rows.head(5).reset_index(drop=True)
    signature = _output_signature(predict_frame(model, prep, example))
    status = parent.info.status
    with fluent_uris(tracking_uri):
        try:
            with mlflow.start_run(run_id=parent.info.run_id):
                info = mlflow.pyfunc.log_model(
                    name="champion_model",
                    python_model=str(SERVING_CODE),
                    artifacts={"model": str(model_dir)},
                    code_paths=[str(TRAINABLES_DIR), *network_module_paths(model_dir)],
                    signature=signature,
                    input_example=example,
                    pip_requirements=pip_requirements(),
                )
        finally:
            client.set_terminated(parent.info.run_id, status)  # resuming the parent must not change how it ended
        version = mlflow.register_model(info.model_uri, registered_name)
    client.set_registered_model_alias(registered_name, CHAMPION, version.version)
    client.set_model_version_tag(registered_name, version.version, "hps.search", parent.data.tags.get("hps.search", ""))
    if source_models:  # the Models tab's trial models this version was made from (retrained, with refit)
        client.set_model_version_tag(registered_name, version.version, SOURCE_MODELS_TAG, ",".join(source_models))
    return f"models:/{registered_name}@{CHAMPION}"


def network_module_paths(model_dir: Path) -> list[str]:
    """The installed code a module builder's network (``mypkg.nets:build``) imports, for MLflow to carry with the
    champion (``code_paths``): each such module's top-level package folder (or single file). A file builder's code
    is inside the model folder already."""
    import importlib.util
    import json

    paths: list[str] = []
    for description in sorted(Path(model_dir).rglob("model.json")):
        module = (json.loads(description.read_text()).get("architecture") or {}).get("network", {}).get("module")
        spec = importlib.util.find_spec(module.split(".")[0]) if module else None
        if spec is None:
            continue
        location = list(spec.submodule_search_locations or []) or [spec.origin]
        paths += [str(p) for p in location if p and str(p) not in paths]
    return paths


def _output_signature(predictions: pd.DataFrame) -> ModelSignature:
    """The signature the champion is logged with: its outputs only; the raw input columns are shown by the input
    example and checked by the saved preprocessing (names, imputation, unseen categories).

    Every input typing MLflow 3.17 offers refuses some raw rows a user sends: ``any`` makes the scoring server refuse
    ``text/csv`` (it cannot give pandas a type for it); ``double`` makes ``PyFuncModel.predict`` refuse an int64 column
    (``pd.read_csv`` of whole numbers); ``long`` refuses a column with a gap (float64). Without an input schema the
    scoring server reads CSV and JSON with pandas' own types and the pyfunc takes any frame.
    """
    return ModelSignature(outputs=infer_signature(predictions).inputs)
