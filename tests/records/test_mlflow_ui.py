"""The MLflow UI itself, in a real headless Chromium (`apt-get install chromium`), on a real `mlflow server`: the
runs view names each run's datasets and models, a trial's page lists its LoggedModel with its metrics, and the
Models tab lists every trial's model.

A browser check, not part of `make test` (about 40 s, and a browser a CI machine may not have): run it with
`make ui-check`, or `HPS_UI_CHECK=1 pytest tests/records/test_mlflow_ui.py`. Without Chromium it is skipped."""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess

import pytest
import yaml
from mlflow.tracking import MlflowClient

from search.cli import main
from search.records.leaderboard import find_search_run, trial_runs
from tests.conftest import load_yaml, shrink

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.environ.get("HPS_UI_CHECK"), reason="a browser check: make ui-check runs it"),
    pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (apt-get install chromium)"),
]


def page_text(url: str) -> list[str]:
    """The visible text of ``url`` once the UI's requests are answered, one piece a line."""
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=2400,1400",
                          "--virtual-time-budget=15000", "--dump-dom", url],
                         capture_output=True, text=True, timeout=120).stdout
    text = re.sub(r"<script.*?</script>|<style.*?</style>", "", dom, flags=re.S)
    return [line.strip() for line in html.unescape(re.sub(r"<[^>]+>", "\n", text)).splitlines() if line.strip()]


def test_the_ui_shows_datasets_and_models(ray_session, mlflow_server, tmp_path):
    raw = shrink(load_yaml("breast_cancer.yaml"), "ui-check", mlflow_server, num_samples=2, max_epochs=2)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    address = ray_session.get_runtime_context().gcs_address
    assert main(["run", str(tmp_path / "c.yaml"), "--address", address, "--storage", str(tmp_path / "runs")]) == 0
    assert main(["evaluate", "ui-check", "--tracking-uri", mlflow_server]) == 0
    client = MlflowClient(mlflow_server)
    parent = find_search_run(client, "ui-check")
    experiment = parent.info.experiment_id

    runs = page_text(f"{mlflow_server}/#/experiments/{experiment}/runs")
    header = runs.index("Run Name")
    assert {"Dataset", "Models"} <= set(runs[header:header + 8]), runs[header:header + 8]
    assert "Training runs" in runs  # a model-training experiment: opened on its runs, not the GenAI overview
    assert any(line.startswith("sklearn:breast_cancer (train)") for line in runs), runs
    row = runs[header:]
    # The parent row's Models cell: the evaluated model it logged, shown by its registered name and version.
    assert row.count("ui-check") >= 2 and "v1" in row, row[:40]

    for trial in trial_runs(client, parent):
        page = page_text(f"{mlflow_server}/#/experiments/{experiment}/runs/{trial.info.run_id}")
        name = f"trial-{trial.data.tags['hps.trial_id']}"
        assert "Logged models (1)" in page and name in page, page[:200]
        assert "Datasets" in page and any(line.startswith("sklearn:breast_cancer (train)") for line in page)

    models = page_text(f"{mlflow_server}/#/experiments/{experiment}/models")
    for trial in trial_runs(client, parent):
        assert f"trial-{trial.data.tags['hps.trial_id']}" in models
