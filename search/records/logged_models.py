"""Each trial's kept model as an MLflow 3 LoggedModel: listed in the experiment's Models tab with the trial's
hyperparameters and best-epoch metrics, found by ``mlflow.search_logged_models``, and loaded like any MLflow model
with ``mlflow.pyfunc.load_model("models:/<model_id>")``.

The model is a pyfunc "from code" (``search/review/serving.py``, the code the registered champion runs too) carrying the
trial's model folder (weights, ``model.json``, a user's network code), loaded with ``torch.load(weights_only=True)``;
it imports ``trainables`` from the environment it loads in (hps installed), unlike the registered champion, which
carries that code too (``code_paths``) to be served anywhere. ``mlflow.pyfunc.save_model`` costs about half a second (it copies and checks
code, writes the environment files), so it runs once per process into a template; each trial then costs four
REST calls and two uploads: create the LoggedModel, upload the template and the model folder, finalize it, log its
metrics (``log_batch`` with its ``model_id``).

Idempotent, for the outage-safe writer that retries it: a LoggedModel of the same trial run found on the server is
reused (uploads overwrite the same files), so a retry after a lost answer never makes a second model.
"""

from __future__ import annotations

import functools
import importlib
import shutil
import tempfile
import time
from pathlib import Path

from mlflow.entities import LoggedModelOutput, Metric, RunTag
from mlflow.tracking import MlflowClient

SEARCH_DIR = Path(__file__).resolve().parent.parent
SERVING_CODE = SEARCH_DIR / "review" / "serving.py"  # the pyfunc's code ("models from code"), a review module
TRAINABLES_DIR = SEARCH_DIR.parent / "trainables"
MODEL_ARTIFACT = "model"  # the pyfunc's artifact holding the hps model folder (artifacts/model/ in the LoggedModel)
MODEL_TYPE = "hps-pytorch"
LOGGED_MODEL_TAG = "hps.model_id"  # on the trial's run: its LoggedModel
ENVIRONMENT_FILES = ("conda.yaml", "python_env.yaml", "requirements.txt")


def pip_requirements() -> list[str]:
    """What a served hps model needs, listed (MLflow's own environment inference takes seconds)."""
    return [f"torch=={_version('torch')}", f"pandas=={_version('pandas')}", f"numpy=={_version('numpy')}",
            f"scikit-learn=={_version('sklearn')}"]


def _version(module: str) -> str:
    return importlib.import_module(module).__version__.split("+")[0]


@functools.lru_cache(maxsize=1)
def pyfunc_template() -> Path:
    """A pyfunc model folder (MLmodel, serving.py, code/trainables, environment files) whose ``artifacts/model`` is
    left empty for each trial's model folder; made once per process."""
    root = Path(tempfile.mkdtemp(prefix="hps-pyfunc-"))
    placeholder = root / MODEL_ARTIFACT
    placeholder.mkdir()
    (placeholder / "README").write_text("replaced by each trial's model folder\n")
    import mlflow

    # No code_paths: trainables/ is ~30 files, each one more upload request (they made a trial's LoggedModel cost
    # ~250 ms instead of ~60 ms); a trial's model loads where hps is installed, as everything of a search does.
    # The registered champion, which is served elsewhere, carries them.
    mlflow.pyfunc.save_model(str(root / "template"), python_model=str(SERVING_CODE),
                             artifacts={MODEL_ARTIFACT: str(placeholder)}, pip_requirements=pip_requirements())
    for leftover in (root / "template" / "artifacts" / MODEL_ARTIFACT).iterdir():
        leftover.unlink()
    # The environment files only serve `mlflow models serve` rebuilding an environment, which is the champion's job
    # (it has them); each is one more upload per trial. Loading with the environment at hand needs none of them.
    for environment in ENVIRONMENT_FILES:
        (root / "template" / environment).unlink(missing_ok=True)
    return root / "template"


def find_logged_model(client: MlflowClient, experiment_id: str, run_id: str):
    """The LoggedModel a trial run produced, or None."""
    found = client.search_logged_models([experiment_id], max_results=1,
                                        filter_string=f"source_run_id = '{run_id}' AND model_type = '{MODEL_TYPE}'")
    return found[0] if found else None


def trial_models(client: MlflowClient, experiment_id: str) -> list:
    """Every trial's LoggedModel in an experiment (the registered champions, LoggedModels too, are not trials')."""
    return list(client.search_logged_models([experiment_id], filter_string=f"model_type = '{MODEL_TYPE}'"))


def log_trial_model(client: MlflowClient, experiment_id: str, run_id: str, model_folder: str, name: str,
                    params: dict, metrics: dict[str, float], tags: dict[str, str] | None = None, step: int = 0,
                    datasets: list[dict] | None = None, look_first: bool = True,
                    run_tags: dict[str, str] | None = None) -> str:
    """Make (or finish) the LoggedModel of trial run ``run_id`` from its local ``model_folder``: ``params`` (the
    trial's hyperparameters), ``metrics`` (its best-epoch summary, ``best_epoch_*``, logged on the run at ``step``
    as before LoggedModels, now linked by ``model_id``, and each ``best_epoch_val_*``/``best_epoch_train_*`` to the
    rows it was measured on, from ``datasets``: :func:`search.records.inputs.split_datasets`). ``look_first``: find a
    model an earlier try made (the writer says so for a retried write). ``run_tags`` go on the run with the metrics
    and ``hps.model_id``, in the same request, once the model is ready. Returns the model id.

    Requests per trial, each ~8-15 ms against a one-worker server: create, one upload request per file (MLmodel,
    serving.py, the model folder's files), finalize, the run's output, one ``log_batch``."""
    from mlflow.entities import LoggedModelStatus

    # Looked up only where an earlier try may have made it (``look_first``): one request less per trial otherwise.
    model = find_logged_model(client, experiment_id, run_id) if look_first else None
    if model is None:
        model = client.create_logged_model(experiment_id, name=name, source_run_id=run_id, model_type=MODEL_TYPE,
                                           params={k: str(v)[:6000] for k, v in params.items()}, tags=tags)
    if model.status != LoggedModelStatus.READY:
        with tempfile.TemporaryDirectory(prefix="hps-logged-model-") as staging:
            _stage(Path(staging), Path(model_folder))
            client.log_model_artifacts(model.model_id, staging)
        client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
        # The run's output, as mlflow's log_model records it: the runs table's Models column and the run page.
        client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=step)])
    now = int(time.time() * 1000)
    by_context = {d["context"]: d for d in datasets or []}

    def measured_on(key: str) -> dict:  # the Models tab shows each metric with the dataset it was measured on
        part = by_context.get("training" if key.startswith("best_epoch_train_") else "validation", {})
        return {"dataset_name": part.get("name"), "dataset_digest": part.get("digest")}

    client.log_batch(run_id, metrics=[Metric(key, float(value), now, step, model_id=model.model_id,
                                             **measured_on(key)) for key, value in metrics.items()],
                     tags=[RunTag(k, str(v)) for k, v in {**(run_tags or {}), LOGGED_MODEL_TAG: model.model_id}.items()])
    return model.model_id


def _stage(staging: Path, model_folder: Path) -> None:
    """The LoggedModel's files in one folder, for one upload call: the template's (linked, not copied) and the
    trial's model folder under ``artifacts/model`` (copied: MLflow's upload does not enter linked folders)."""
    for item in pyfunc_template().iterdir():
        if item.is_file():
            (staging / item.name).symlink_to(item)
    shutil.copytree(model_folder, staging / "artifacts" / MODEL_ARTIFACT)
