"""The search-quality benchmark's own logic (paired wins, reused searches); its run end to end is in
tests/test_benchmarks.py."""

from __future__ import annotations

import json

import pytest


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
