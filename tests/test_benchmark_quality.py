"""The search-quality benchmark runs end to end on a tiny budget: `python -m benchmarks --parts quality`."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from tests.conftest import ROOT

ANCHORS = ("mlp", "hist_gb", "linear")


@pytest.mark.slow
def test_quality_part_reports_hps_and_every_anchor(tmp_path):
    out = tmp_path / "quality.json"
    # One small config, one split seed, 2 trials x 2 epochs: the real `hps run` and `hps evaluate` (Ray start-up
    # is most of the time), then the anchors on the same split.
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--parts", "quality", "--configs", "wine",
                           "--seeds", "3", "--trials", "2", "--epochs", "2", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
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
