"""The search-quality benchmark runs end to end on a tiny budget: `python -m benchmarks --parts quality`."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

ANCHORS = ("mlp", "hist_gb", "linear")


def test_quality_part_reports_hps_and_every_anchor(ray_session, tmp_path):
    out = tmp_path / "quality.json"
    # One small config, one split seed, 2 trials x 2 epochs: the real `hps run` (joining the session's Ray through
    # RAY_ADDRESS, as `ray.init()` reads it) and `hps evaluate`, then the anchors on the same split.
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--parts", "quality", "--configs", "wine",
                           "--seeds", "3", "--trials", "2", "--epochs", "2", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = json.loads(out.read_text())
    wine = results["quality"]["datasets"]["wine"]
    seed = wine["seeds"]["3"]
    assert seed["hps"]["trials"] == 2 and seed["hps"]["val_metric"] == "val_loss"
    assert seed["hps"]["split_fingerprint"] == seed["anchors"]["split_fingerprint"]  # the same test rows
    assert seed["anchors"]["metric"] == "test_accuracy" and seed["anchors"]["n_test"] == 36
    scores = [seed["hps"]["test"]["test_accuracy"], *(seed["anchors"]["scores"][a] for a in ANCHORS)]
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert min(seed["anchors"]["scores"].values()) > 0.8  # wine is easy: the defaults all do well
    summary = wine["summary"]
    assert summary["hps"]["n"] == 1 and math.isclose(summary["hps"]["mean"], scores[0])
    assert all(summary["vs"][a]["n"] == 1 for a in ANCHORS)
    table = (out.with_suffix(".md")).read_text()
    assert table.strip() in proc.stdout
    row = next(line for line in table.splitlines() if line.startswith("| wine |"))
    assert f"{scores[0]:.4f}" in row and all(f"{s:.4f}" in row for s in scores[1:])
    assert results["machine"]["cpu"] in table and "--parts quality" in table


def _seed(hps: float, mlp: float, metric: str = "test_mae", random: float | None = None) -> dict:
    record = {"hps": {"test": {metric: hps}, "val_metric": "val_mae", "best_val": hps,
                      "evaluated": {"top_k": 1, "refit": False}},
              "anchors": {"metric": metric, "task": "regression", "n_dev": 100, "n_test": 20,
                          "scores": {"mlp": mlp, "hist_gb": hps, "linear": hps + 1}}}
    if random is not None:
        record["hps_random"] = {"test": {metric: random}, "val_metric": "val_mae", "best_val": random}
    return record


def test_summary_counts_paired_wins_in_the_metric_direction():
    from benchmarks.quality import summarize

    # MAE: lower is better. hps beats the MLP on seed 1 only, ties gradient boosting on both, beats linear on both.
    summary = summarize({"1": _seed(2.0, 2.5, random=2.2), "2": _seed(3.0, 2.0, random=2.8),
                         "3": {"hps": {"error": "hps run exited with 1"}, "anchors": {}}})
    assert summary["hps"] == {"mean": 2.5, "sd": summary["hps"]["sd"], "n": 2}
    assert summary["vs"]["mlp"]["wins"] == 1 and summary["vs"]["hist_gb"] == {"wins": 0, "ties": 2, "n": 2,
                                                                             "mean_diff": 0.0}
    assert summary["vs"]["linear"]["wins"] == 2
    assert summary["sampler"]["tpe_vs_random_val"]["wins"] == 1  # 2.0 < 2.2, 3.0 > 2.8
    accuracy = summarize({"1": _seed(0.9, 0.8, "test_accuracy")})  # higher is better
    assert accuracy["vs"]["mlp"]["wins"] == 1 and accuracy["vs"]["linear"]["wins"] == 0


def test_recorded_searches_are_reused_and_named_in_the_table(tmp_path):
    from benchmarks.quality import Settings, anchors, config_path, earlier_searches, measure, table

    # An earlier run's wine seed 3 (TPE and random both recorded, on the real split's fingerprint): a run with the
    # same settings starts no search, only fits the anchors again and checks they score the same test rows.
    config = config_path("wine")
    fingerprint = anchors(config, ["data.split.seed=3", "search.seed=3"], 3)["split_fingerprint"]
    searched = {label: {"test": {"test_accuracy": acc}, "val_metric": "val_loss", "best_val": loss, "trials": 30,
                        "evaluated": {"top_k": 1, "refit": False}, "split_fingerprint": fingerprint}
                for label, acc, loss in (("hps", 0.97, 0.05), ("hps_random", 0.94, 0.08))}
    settings = Settings(configs=("wine",), seeds=(3,), sampler_compare=True)
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps({"quality": {**_recorded_settings(settings), "datasets": {
        "wine": {"seeds": {"3": {**searched, "anchors": {}}}}}}}))
    reuse = earlier_searches([earlier], settings)
    assert set(reuse) == {("wine", 3, "hps"), ("wine", 3, "hps_random")}
    quality = measure(settings, tmp_path / "work", reuse=reuse)  # no workdir is made: nothing is run
    record = quality["datasets"]["wine"]["seeds"]["3"]
    assert record["hps"]["reused_from"] == str(earlier) and record["hps_random"]["test"]["test_accuracy"] == 0.94
    assert quality["datasets"]["wine"]["summary"]["sampler"]["tpe_vs_random_val"]["wins"] == 1  # 0.05 < 0.08
    text = table({"quality": quality, "machine": {"cpu": "cpu", "cpus": 2, "gpu": "none", "torch": "t", "ray": "r",
                                                  "optuna": "o", "load_before": []}})
    assert "TPE vs random" in text and "`earlier.json`" in text
    with pytest.raises(ValueError, match="other overrides"):  # a different budget searched something else
        earlier_searches([earlier], Settings(configs=("wine",), seeds=(3,), trials=5))


def _recorded_settings(settings) -> dict:
    """The ``settings`` entry a quality run records for ``settings``."""
    from dataclasses import asdict

    return {"settings": {**asdict(settings), "budget_overrides": settings.budget_overrides()}}
