"""Every reference config in configs/ runs, as a tiny search (2 trials, 2 epochs)."""

from __future__ import annotations

import pytest
import yaml
from mlflow.tracking import MlflowClient

from search.config import parse_config
from search.tuner import run_search
from tests.conftest import CONFIGS, shrink
from tests.tables import write_idx

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_reference_config_runs(path, ray_session, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    raw = yaml.safe_load(path.read_text())
    if raw["data"]["source"].startswith("idx:"):  # MNIST is not shipped: tiny IDX files in its place
        raw["data"]["source"] = f"idx:{write_idx(tmp_path / 'idx', n_train=100, n_test=20, side=28)}"
    cfg = parse_config(shrink(raw, f"tiny-{path.stem}", uri, num_samples=2, max_epochs=2))
    outcome = run_search(cfg, storage=str(tmp_path / "runs"))
    assert len(outcome.leaderboard) == 2
    assert set(outcome.leaderboard["status"]) == {"FINISHED"}
    metric = f"best_{cfg.search.metric}"
    assert outcome.leaderboard[metric].notna().all()
    assert MlflowClient(uri).get_run(outcome.parent_run_id).info.status == "FINISHED"
