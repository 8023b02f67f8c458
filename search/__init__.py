"""The search service around ``trainables``: config, Optuna space and searcher, Ray wiring, storage, the search's
lifecycle, MLflow records, the reading commands and the CLI (docs/architecture.md has the map).

Heavy dependencies (Ray, MLflow) load only when a search runs; ``hps validate`` stays fast. Importing the package
itself imports nothing: the thin function a packed trial runs (``search.packed_trial``) starts in a fresh Ray
worker process for every trial running at once, and pays for every import it triggers.
"""

import importlib

_EXPORTS = {"ConfigError", "HpsConfig", "load_config", "parse_config"}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module("search.config"), name)
    raise AttributeError(f"module 'search' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
