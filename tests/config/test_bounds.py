"""Issue 14: every unbounded or hanging value is refused by `hps validate` (and `hps run`, before Ray starts) in one
line, fast, and the limits can be raised where a search legitimately needs more."""

from __future__ import annotations

import copy
import subprocess
import sys
import time

import pytest
import yaml

from search.cli import main
from search.config.capacity import DataShape, check_fits, trial_bytes
from search.config.schema import ConfigError, apply_overrides, parse_config
from tests.conftest import CONFIGS, load_yaml

BASE = load_yaml("digits.yaml")
GIB = 2**30


def with_sets(*sets: str) -> dict:
    return apply_overrides(copy.deepcopy(BASE), list(sets))


@pytest.mark.parametrize("sets,key,fragment", [
    # Before: passed validation, then asha_rungs (and Tune's ASHA) looped ~10^16 times at 100% CPU.
    (["scheduler.reduction_factor=1.0000000000000002"], "scheduler.reduction_factor", "greater than or equal to 1.1"),
    (["scheduler.reduction_factor=.inf"], "scheduler.reduction_factor", "finite"),
    (["space.units.high=100000"], "space.units.high", "above the limit of 8192 (raise limits.max_units"),
    (["space.units=1000000"], "space.units", "above the limit of 8192"),
    (["space.n_layers.high=1000"], "space.n_layers.high", "above the limit of 32 (raise limits.max_layers"),
    (["space.batch_size.choices=[32, 100000000]"], "space.batch_size.choices", "limits.max_batch_size"),
    (["search.num_samples=1000000000"], "search.num_samples", "above the limit of 10000 (raise limits.max_trials"),
    (["scheduler.max_epochs=1000000000"], "scheduler.max_epochs", "above the limit of 10000 (raise limits.max_epochs"),
    (["space.lr.high=.inf"], "space.lr.high", "finite"),
    (["space.lr=.inf"], "space.lr", "lr must be a number > 0"),
    (["space.weight_decay=.inf"], "space.weight_decay", "must be a number >= 0"),
    (["data.split.seed=-1"], "data.split.seed", "greater than or equal to 0"),
    (["search.seed=99999999999999"], "search.seed", "less than or equal to 4294967295"),
    (["resources.cpus_per_trial=.inf"], "resources.cpus_per_trial", "finite"),
    (["training.report_interval_s=.nan"], "training.report_interval_s", "finite"),
    (["limits.memory_fraction=2"], "limits.memory_fraction", "less than or equal to 1"),
    (["limits.max_units=0"], "limits.max_units", "greater than 0"),
])
def test_unbounded_values_are_refused_naming_the_key(sets, key, fragment):
    with pytest.raises(ConfigError) as info:
        parse_config(with_sets(*sets))
    message = str(info.value)
    assert message.startswith(key) and fragment in message and "\n" not in message, message


def test_limits_can_be_raised_where_a_search_needs_more():
    cfg = parse_config(with_sets("limits.max_units=16384", "space.units.high=16384", "limits.max_trials=20000",
                                 "search.num_samples=20000", "limits.max_epochs=20000", "scheduler.max_epochs=20000"))
    assert cfg.space["units"].high == 16384 and cfg.search.num_samples == 20000
    # The reference configs are well within the defaults.
    for path in sorted(CONFIGS.glob("*.yaml")):
        check_fits(parse_config(yaml.safe_load(path.read_text())), memory=4 * GIB)  # even on a small machine


def test_rung_computation_is_small_for_the_extreme_allowed_values():
    # Smallest factor, most epochs, earliest grace period: still a handful of rungs, computed at once.
    from search.run.ray_setup import asha_rungs

    cfg = parse_config(with_sets("scheduler.reduction_factor=1.1", "scheduler.max_epochs=10000",
                                 "scheduler.grace_period=1"))
    started = time.monotonic()
    rungs = asha_rungs(cfg)
    assert len(rungs) < 120 and time.monotonic() - started < 0.1
    assert max(rungs) < 10000


def run_validate(tmp_path, raw: dict, *sets: str) -> tuple[int, str, float]:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    started = time.monotonic()
    argv = ["validate", str(path)] + [arg for s in sets for arg in ("--set", s)]
    code = main(argv)
    return code, "", time.monotonic() - started


@pytest.mark.parametrize("sets", [
    ["scheduler.reduction_factor=1.0000000000000002"],
    ["space.units.high=100000"],
    ["search.num_samples=1000000000"],
    # Within every per-key limit, but 3 layers of 1,000,000 units are ~3e12 parameters: no host holds that.
    ["limits.max_units=1000000", "space.units.high=1000000"],
])
def test_hps_validate_refuses_in_one_line_within_a_second(tmp_path, capsys, sets):
    code, _, elapsed = run_validate(tmp_path, copy.deepcopy(BASE), *sets)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("hps: error: config: ") and err.count("\n") == 1, err
    assert elapsed < 1.0, elapsed  # the modules are imported already: this is the check itself


def test_the_largest_network_is_sized_against_the_memory_trials_get():
    cfg = parse_config(with_sets("space.units.high=8192", "space.n_layers.high=32", "search.max_concurrent=2"))
    per_trial, data, net = trial_bytes(cfg, DataShape(rows=1000, inputs=64, outputs=10))
    assert net["params"] > 31 * 8192 * 8192 and per_trial > 31 * 8192 * 8192 * 4 * 4 and data == 1000 * 65 * 4
    with pytest.raises(ConfigError, match=r"^space: does not fit in memory: the largest network the space allows "
                                          r"\(32 hidden layer\(s\) of 8192 units.*limits.memory_fraction"):
        check_fits(cfg, DataShape(rows=1000, inputs=64, outputs=10), memory=64 * GIB)
    check_fits(cfg, DataShape(rows=1000, inputs=64, outputs=10), memory=4096 * GIB)  # a big host takes it
    # limits.memory_fraction is the share of the host the trials together may take.
    small = parse_config(with_sets("space.units.high=64"))
    check_fits(small, memory=1 * GIB)
    with pytest.raises(ConfigError, match="0.0001 of this host"):
        check_fits(parse_config(with_sets("space.units.high=2048", "limits.memory_fraction=0.0001")), memory=GIB)


def test_data_too_big_for_memory_names_the_data():
    cfg = parse_config(with_sets("space.units.high=64"))
    with pytest.raises(ConfigError, match=r"^data: does not fit in memory: .*its data ~\d.* GiB per trial.*data.features"):
        check_fits(cfg, DataShape(rows=10_000_000, inputs=2_000, outputs=2), memory=64 * GIB)


def test_hps_run_refuses_a_network_that_cannot_fit_before_ray_starts(tmp_path):
    """As a real process: exit 2, one line, nothing recorded and no storage claimed."""
    raw = with_sets("limits.max_units=1000000", "space.units.high=1000000")
    raw["tracking"]["uri"] = f"sqlite:///{tmp_path}/never.db"
    path = tmp_path / "huge.yaml"
    path.write_text(yaml.safe_dump(raw))
    proc = subprocess.run([sys.executable, "-m", "search.cli", "run", str(path), "--storage", str(tmp_path / "s")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "does not fit in memory" in proc.stderr, proc.stderr
    assert not (tmp_path / "never.db").exists() and not (tmp_path / "s").exists()


def test_hps_validate_as_a_process_does_not_load_torch(tmp_path):
    # The whole command, interpreter start included, answers in about a second: no torch, pandas or sklearn.
    code = ("import sys; from search.cli import main; rc = main(['validate', sys.argv[1], '--set', "
            "'scheduler.reduction_factor=1.0000000000000002']); "
            "heavy = [m for m in ('torch', 'pandas', 'sklearn', 'ray', 'mlflow') if m in sys.modules]; "
            "print(rc, heavy)")
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code, str(CONFIGS / "digits.yaml")], capture_output=True, text=True,
                          timeout=60)
    elapsed = time.monotonic() - started
    assert proc.stdout.strip() == "2 []", proc.stdout + proc.stderr
    assert "reduction_factor" in proc.stderr and proc.stderr.count("\n") == 1
    assert elapsed < 3.0, elapsed  # ~0.5 s here; the bound leaves room for a busy CI machine


def test_the_issue_command_ends_at_once(tmp_path):
    """`hps run configs/digits.yaml --set scheduler.reduction_factor=1.0000000000000002` spun at 100% CPU until
    killed; now it is a one-line error with exit 2, before anything is created."""
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "search.cli", "run", str(CONFIGS / "digits.yaml"), "--set",
                           "scheduler.reduction_factor=1.0000000000000002", "--tracking-uri",
                           f"sqlite:///{tmp_path}/never.db", "--storage", str(tmp_path / "s")],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "scheduler.reduction_factor" in proc.stderr and time.monotonic() - started < 30
    assert not (tmp_path / "never.db").exists() and not (tmp_path / "s").exists()


def test_a_trial_needing_more_cpus_than_this_host_has_is_refused_before_ray_starts():
    # Tune would wait for ever for a node with that many CPUs.
    from search.config.capacity import check_this_host
    from search.config.dataset import split_from_config

    cfg = parse_config(with_sets("resources.cpus_per_trial=64"))
    split = split_from_config(cfg)
    with pytest.raises(ConfigError, match="^resources.cpus_per_trial: 64 CPUs per trial, but this host has 8: no trial"):
        check_this_host(cfg, split, cpus=8)
    check_this_host(cfg, split, cpus=64, memory=64 * GIB)


def test_a_gpu_trial_on_a_host_without_a_gpu_is_refused_before_ray_starts():
    # Tune would wait for ever for a node with a GPU.
    from search.config.capacity import check_this_host
    from search.config.dataset import split_from_config

    cfg = parse_config(with_sets("resources.gpus_per_trial=0.25"))
    split = split_from_config(cfg)
    with pytest.raises(ConfigError, match="^resources.gpus_per_trial: 0.25 GPU per trial, but this host has no GPU"):
        check_this_host(cfg, split, gpus=0, memory=64 * GIB)
    check_this_host(cfg, split, gpus=1, memory=64 * GIB)


def test_retries_are_bounded():
    # A trial that fails every time was retried search.max_failures times: 10^9 is for ever.
    with pytest.raises(ConfigError, match="^search.max_failures: Input should be less than or equal to 100"):
        parse_config(with_sets("search.max_failures=1000000000"))
