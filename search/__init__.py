"""The search service: config, space, searcher, tuner, tracking, leaderboard, CLI.

Heavy dependencies (Ray, MLflow) load only when a search runs; ``hps validate`` stays fast.
"""

from search.config import ConfigError, HpsConfig, load_config, parse_config

__all__ = ["ConfigError", "HpsConfig", "load_config", "parse_config"]
