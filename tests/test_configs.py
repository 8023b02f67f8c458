"""Every reference config in configs/ runs, as a tiny search (2 trials, 2 epochs)."""

from __future__ import annotations

import pytest
import yaml
from mlflow.tracking import MlflowClient

from search.config import parse_config
from search.tuner import run_search
from tests.conftest import CONFIGS, shrink

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_reference_config_runs(path, ray_session, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    cfg = parse_config(shrink(yaml.safe_load(path.read_text()), f"tiny-{path.stem}", uri, num_samples=2, max_epochs=2))
    outcome = run_search(cfg, storage=str(tmp_path / "runs"))
    assert len(outcome.leaderboard) == 2
    assert set(outcome.leaderboard["status"]) == {"FINISHED"}
    metric = f"best_{cfg.search.metric}"
    assert outcome.leaderboard[metric].notna().all()
    assert MlflowClient(uri).get_run(outcome.parent_run_id).info.status == "FINISHED"
