"""The search service around ``trainables``: config, Optuna space and searcher, Ray wiring, storage, the search's
lifecycle, MLflow records, the reading commands and the CLI (docs/architecture.md has the map).

Heavy dependencies (Ray, MLflow) load only when a search runs; ``hps validate`` stays fast.
"""

from search.config import ConfigError, HpsConfig, load_config, parse_config

__all__ = ["ConfigError", "HpsConfig", "load_config", "parse_config"]
