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
import logging
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
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
    # Without an input example MLflow warns that it cannot infer a signature: true, and nothing a user can act on
    # (the template is made in the middle of their search's output).
    pyfunc_log = logging.getLogger("mlflow.pyfunc")
    level = pyfunc_log.level
    pyfunc_log.setLevel(logging.ERROR)
    try:
        mlflow.pyfunc.save_model(str(root / "template"), python_model=str(SERVING_CODE),
                                 artifacts={MODEL_ARTIFACT: str(placeholder)}, pip_requirements=pip_requirements())
    finally:
        pyfunc_log.setLevel(level)
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


def trial_model_request(experiment_id: str, search: str, trial_id: str, params: dict, summary: dict[str, float],
                        datasets: list[dict] | None = None, look_first: bool = False,
                        run_tags: dict[str, str] | None = None) -> dict:
    """The ``logged_model`` of a model upload (:func:`search.records.writer.log_folder`): the keyword arguments of
    :func:`log_trial_model` but the folder and run, JSON-ready (a write waiting for the server is saved with them)."""
    return {"experiment_id": experiment_id, "name": f"trial-{trial_id}", "params": dict(params), "metrics": summary,
            "tags": {"hps.search": search, "hps.trial_id": trial_id}, "datasets": datasets, "look_first": look_first,
            **({"run_tags": run_tags} if run_tags else {})}


def log_trial_model(client: MlflowClient, experiment_id: str, run_id: str, model_folder: str, name: str,
                    params: dict, metrics: dict[str, float], tags: dict[str, str] | None = None, step: int = 0,
                    datasets: list[dict] | None = None, look_first: bool = True,
                    run_tags: dict[str, str] | None = None) -> str:
    """Make (or finish) the LoggedModel of trial run ``run_id`` from its local ``model_folder`` and log its metrics:
    :func:`make_trial_model`, then one ``log_batch`` of :func:`linked_metrics` with ``run_tags`` and
    ``hps.model_id``. Returns the model id."""
    model_id = make_trial_model(client, experiment_id, run_id, model_folder, name, params, tags, step, look_first)
    log_model_metrics(client, run_id, model_id, metrics, step, datasets, run_tags)
    return model_id


def log_model_metrics(client: MlflowClient, run_id: str, model_id: str, metrics: dict[str, float], step: int = 0,
                      datasets: list[dict] | None = None, run_tags: dict[str, str] | None = None) -> None:
    """The last write of a trial's model, one request: its :func:`linked_metrics`, the ``run_tags`` (``hps.model``:
    the files are there) and ``hps.model_id``."""
    client.log_batch(run_id, metrics=linked_metrics(model_id, metrics, step, datasets),
                     tags=[RunTag(k, str(v)) for k, v in {**(run_tags or {}), LOGGED_MODEL_TAG: model_id}.items()])


def make_trial_model(client: MlflowClient, experiment_id: str, run_id: str, model_folder: str, name: str,
                     params: dict, tags: dict[str, str] | None = None, step: int = 0, look_first: bool = True) -> str:
    """The READY LoggedModel of trial run ``run_id``: ``params`` (the trial's hyperparameters) and ``tags``, the
    pyfunc template's files and ``model_folder`` under ``artifacts/model``, the run's model output. ``look_first``:
    finish a model an earlier try made instead of making another (the writer asks it for a retried write).

    Its requests (~8-15 ms each against a one-worker server): create, one upload per file (sent
    :data:`UPLOAD_THREADS` at a time), finalize, the run's output."""
    from mlflow.entities import LoggedModelStatus

    # Looked up only where an earlier try may have made it (``look_first``): one request less per trial otherwise.
    model = find_logged_model(client, experiment_id, run_id) if look_first else None
    if model is None:
        model = client.create_logged_model(experiment_id, name=name, source_run_id=run_id, model_type=MODEL_TYPE,
                                           params={k: str(v)[:6000] for k, v in params.items()}, tags=tags)
    if model.status != LoggedModelStatus.READY:
        files = [(str(path), None) for path in pyfunc_template().iterdir() if path.is_file()]
        files += folder_files(model_folder, f"artifacts/{MODEL_ARTIFACT}")
        upload_files(lambda path, where: client.log_model_artifact(model.model_id, path, where), files)
        client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
        # The run's output, as mlflow's log_model records it: the runs table's Models column and the run page.
        client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=step)])
    return model.model_id


def linked_metrics(model_id: str, metrics: dict[str, float], step: int = 0,
                   datasets: list[dict] | None = None) -> list[Metric]:
    """A trial's best-epoch summary (``best_epoch_*``) as metrics of its LoggedModel: each linked by ``model_id``
    and to the rows it was measured on (``datasets``: :func:`search.records.inputs.split_datasets`), which the
    Models tab shows beside it."""
    by_context = {d["context"]: d for d in datasets or []}
    now = int(time.time() * 1000)

    def measured_on(key: str) -> dict:
        part = by_context.get("training" if key.startswith("best_epoch_train_") else "validation", {})
        return {"dataset_name": part.get("name"), "dataset_digest": part.get("digest")}

    return [Metric(key, float(value), now, step, model_id=model_id, **measured_on(key))
            for key, value in metrics.items()]


# Files uploaded at once: each upload is one request that mostly waits for the server; one after the other, a
# trial's LoggedModel made a 200-trial search's MLflow writes the bottleneck of its wall time.
UPLOAD_THREADS = 4


def folder_files(folder: str | Path, artifact_path: str | None) -> list[tuple[str, str | None]]:
    """Every file of ``folder`` with the artifact folder it goes to (``artifact_path`` + its place inside)."""
    files = []
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            inside = path.parent.relative_to(folder).as_posix()
            where = "/".join(part for part in (artifact_path, "" if inside == "." else inside) if part) or None
            files.append((str(path), where))
    return files


def upload_files(upload: Callable[[str, str | None], None], files: list[tuple[str, str | None]]) -> None:
    """``upload(path, artifact_folder)`` for every file: the first alone (MLflow's client then knows where the
    run's or model's artifacts go: finding that out is a request of its own, made once), the others
    :data:`UPLOAD_THREADS` at a time. The first failure is raised once all have ended (the caller retries the whole
    write: an upload overwrites the same file)."""
    if not files:
        return
    upload(*files[0])
    with ThreadPoolExecutor(max_workers=UPLOAD_THREADS) as pool:
        for future in [pool.submit(upload, path, where) for path, where in files[1:]]:
            future.result()
