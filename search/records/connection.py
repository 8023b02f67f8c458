"""Opening the tracking store: a client, after checking the server answers or the database is where it is said to be.

Kept free of Ray, so that the commands that only read a search (``hps trials``, ``evaluate``, ``predict``,
``report``) start quickly.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import requests
from mlflow.tracking import MlflowClient

from search.errors import TrackingError

REACHABILITY_TIMEOUT_S = 5


def connect(uri: str, existing: bool = False) -> MlflowClient:
    """A client for ``uri``, after checking that the server answers (an HTTP server within a few seconds).

    ``existing``: the command only reads what a search recorded, so a sqlite database that is not there is a
    mistyped URI, reported as such instead of silently created empty.
    """
    if uri.startswith(("http://", "https://")):
        try:
            response = requests.get(uri.rstrip("/") + "/health", timeout=REACHABILITY_TIMEOUT_S)
        except requests.RequestException as exc:
            raise TrackingError(f"tracking server {uri} is unreachable ({type(exc).__name__})") from None
        if response.status_code != 200:
            raise TrackingError(f"tracking server {uri} answered /health with HTTP {response.status_code}")
    elif uri.startswith("sqlite:///"):
        database = Path(uri.removeprefix("sqlite:///")).expanduser()
        parent = database.resolve().parent
        if not parent.is_dir():
            raise TrackingError(f"tracking database folder {parent} does not exist")
        if existing and not database.is_file():
            raise TrackingError(f"no tracking database {database} (nothing was recorded there; check --tracking-uri)")
    for chatty in ("alembic", "mlflow.store.db.utils"):  # schema migration chatter on a new sqlite store
        logging.getLogger(chatty).setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=uri)


URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")  # set by mlflow.set_*_uri for subprocesses


@contextmanager
def preserved_uris() -> Iterator[None]:
    """MLflow's process-wide tracking and registry URIs, and the environment variables setting them writes, as they
    are before the block, restored after it whatever the block set."""
    from mlflow.tracking._model_registry import utils as registry_state
    from mlflow.tracking._tracking_service import utils as tracking_state

    # What was set explicitly (None: not set, MLflow resolves it from the environment or its default).
    tracking, registry = tracking_state._tracking_uri, registry_state._registry_uri  # noqa: SLF001
    environment = {name: os.environ.get(name) for name in URI_VARIABLES}
    try:
        yield
    finally:
        mlflow.set_tracking_uri(tracking)
        mlflow.set_registry_uri(registry)
        for name, value in environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def fluent_uris(uri: str) -> Iterator[None]:
    """MLflow's module-level API (``mlflow.start_run``, ``pyfunc.log_model``, ``register_model``, ``models:/``
    downloads) pointed at ``uri`` for the block; the process's own URIs and environment restored after it.

    Those calls take no client, and resolving ``models:/NAME@alias`` reads the global registry URI even when given
    another; a library function must not leave them changed for its caller.
    """
    with preserved_uris():
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        yield
