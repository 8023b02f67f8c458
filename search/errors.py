"""Errors that mean "bad input": the CLI prints them as one line and exits 2. No heavy imports here."""

from __future__ import annotations

from search.config import ConfigError
from trainables.names import DataError  # the light module: every CLI command imports this one


class TrackingError(RuntimeError):
    """The tracking server cannot be used."""


class SearchExists(FileExistsError):
    """A search of this name already has state in the storage folder."""


class SearchNotFound(LookupError):
    """No search of that name is recorded on the tracking server."""


class StorageError(OSError):
    """The storage folder or bucket for experiment state and checkpoints cannot be used."""


class AlreadyEvaluated(RuntimeError):
    """The search's test set was already used; a second use needs --force."""


class ModelNotFound(LookupError):
    """No usable model behind a model reference or a search."""


USER_ERRORS = (
    ConfigError, DataError, TrackingError, StorageError, SearchExists, SearchNotFound, AlreadyEvaluated, ModelNotFound,
)
