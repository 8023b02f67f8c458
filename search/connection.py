"""Opening the tracking store: a client, after checking the server answers or the database is where it is said to be.

Kept free of Ray, so that the commands that only read a search (``hps trials``, ``evaluate``, ``predict``) start
quickly.
"""

from __future__ import annotations

import logging
from pathlib import Path

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
