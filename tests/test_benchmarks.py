"""The benchmark script itself runs on a tiny budget (numbers not checked): `python -m benchmarks --quick` with every
default part and the quality part, in one process (its ~4 s of imports paid once)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

ANCHORS = ("mlp", "hist_gb", "linear")


@pytest.fixture(scope="module")
def quick(ray_session, tmp_path_factory):
    """One `python -m benchmarks --quick` of the four figures and the quality part: its JSON, its stdout, its path."""
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    # Its searches join the session's Ray (RAY_ADDRESS, as `ray.init()` reads it) instead of starting their own:
    # the quick budget checks that every part runs, not what Ray's start-up costs. Quality: one small config, one
    # split seed, 2 trials x 2 epochs one at a time (as the quick budget's own searches): the real `hps run` and
    # `hps evaluate`, then the anchors on the same split.
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--quick",
                           "--parts", "throughput,overhead,asha,packed,quality", "--configs", "wine", "--seeds", "3",
                           "--trials", "2", "--epochs", "2", "--set", "search.max_concurrent=1", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(out.read_text()), proc.stdout, out


def test_quick_benchmark_writes_all_three_figures(quick):
    results, stdout, _ = quick
    assert results["machine"]["cpu"] and results["machine"]["gpu"] and results["machine"]["cpus"] >= 1
    ratios = [results["throughput"]["ratio"], results["overhead"]["ratio"], results["asha"]["epochs_ratio"]]
    assert all(isinstance(r, float) and math.isfinite(r) and r > 0 for r in ratios)
    assert math.isfinite(results["asha"]["accuracy_gap_pp"])
    assert "| figure |" in stdout and results["machine"]["cpu"] in stdout


def test_quality_part_reports_hps_and_every_anchor(quick):
    results, stdout, out = quick
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
    table = out.with_name(f"{out.stem}-quality.md").read_text()  # beside the JSON (benchmarks.quality.write)
    assert table.strip() in stdout
    row = next(line for line in table.splitlines() if line.startswith("| wine |"))
    assert f"{scores[0]:.4f}" in row and all(f"{s:.4f}" in row for s in scores[1:])
    assert results["machine"]["cpu"] in table and "--parts throughput,overhead,asha,packed,quality" in table


@pytest.mark.parametrize("recorded", sorted(p.name for p in (ROOT / "docs").glob("benchmarks-*.json")))
def test_every_recorded_benchmark_renders_as_a_table(recorded):
    """Results written by earlier versions (before the packed figures or the concurrency field existed) still
    render: the README and docs quote them."""
    from benchmarks.run import table

    results = json.loads((ROOT / "docs" / recorded).read_text())
    text = table(results)
    assert "| figure |" in text and results["machine"]["cpu"] in text
    assert sum(line.startswith("| ") for line in text.splitlines()) >= 2  # the header and at least one figure
