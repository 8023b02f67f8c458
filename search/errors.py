"""The errors hps raises on purpose. Those in ``USER_ERRORS`` mean "bad input": the CLI prints them as one line and
exits 2; the search outcomes below have exit codes of their own. No heavy imports here."""

from __future__ import annotations

from search.config.schema import ConfigError
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


class SearchFailed(RuntimeError):
    """The search ran but produced no usable trial."""


class SearchInterrupted(RuntimeError):
    """The search was stopped (Ctrl-C) before every trial ended; it can be resumed."""


class ClusterTooSmall(ValueError):
    """The Ray cluster cannot hold what the search asks for (its pack servers' CPUs or GPUs)."""


class TrackingBacklog(RuntimeError):
    """The search finished but MLflow writes are still pending (tracking server down)."""


USER_ERRORS = (
    ConfigError, DataError, TrackingError, StorageError, SearchExists, SearchNotFound, AlreadyEvaluated, ModelNotFound,
    ClusterTooSmall,
)
