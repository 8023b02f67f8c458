"""Config validation: every bad input is one clear ConfigError naming the key, before anything starts."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import yaml

from search.cli import main
from search.config.schema import ConfigError, apply_overrides, load_config, parse_config
from tests.conftest import CONFIGS, load_yaml

BASE = load_yaml("digits.yaml")


def with_change(path: str, value) -> dict:
    """A copy of the digits config with one dotted key set (or deleted, for value=...)."""
    raw = copy.deepcopy(BASE)
    *parents, leaf = path.split(".")
    node = raw
    for part in parents:
        node = node[part]
    if value is ...:
        del node[leaf]
    else:
        node[leaf] = value
    return raw


BAD_CASES = {
    "unknown top-level key": (with_change("epochs", 10), "epochs", "unknown key"),
    "unknown nested key": (with_change("search.sampller", "tpe"), "search.sampller", "unknown key"),
    "unknown key in a distribution": (with_change("space.lr.logg", True), "space.lr.logg", "unknown key"),
    "unknown hyperparameter": (with_change("space.lerning_rate", 0.1), "space.lerning_rate", "unknown hyperparameter"),
    "wrong type": (with_change("search.num_samples", "many"), "search.num_samples", "integer"),
    "top-k without the members' models": ({**with_change("tracking.log_models", "best"), "evaluate": {"top_k": 3}},
                                           "evaluate.top_k", "only tracking.log_models: all keeps"),
    "registry name with a slash": (with_change("tracking.registered_model", "team/model"), "tracking.registered_model",
                                   "cannot be a Model Registry name"),
    "low >= high": (with_change("space.lr.low", 0.5), "space.lr", "must be < high"),
    "int low == high": (with_change("space.n_layers.high", 1), "space.n_layers", "must be < high"),
    "log with low <= 0": (with_change("space.weight_decay.low", 0.0), "space.weight_decay", "low > 0"),
    "dropout high of 1": (with_change("space.dropout.high", 1.0), "space.dropout.high", "[0, 1)"),
    "dropout fixed at 1.5": (with_change("space.dropout", 1.5), "space.dropout", "[0, 1)"),
    "negative dropout": (with_change("space.dropout.low", -0.1), "space.dropout.low", "[0, 1)"),
    "empty choices": (with_change("space.activation.choices", []), "space.activation.choices", "at least 1"),
    "unknown activation": (with_change("space.activation.choices", ["relu", "swish"]), "space.activation.choices", "swish"),
    "if names a missing parameter": (with_change("space.momentum.if", {"optimiser": "sgd"}), "space.momentum.if", "optimiser"),
    "unknown sampler": (with_change("search.sampler", "bayes"), "search.sampler", "tpe"),
    "unknown scheduler": (with_change("scheduler.type", "hyperband"), "scheduler.type", "asha"),
    "unknown dataset": (with_change("data.source", "sklearn:mnist"), "data.source", "unknown sklearn dataset"),
    "unknown source kind": (with_change("data.source", "ftp:x"), "data.source", "unknown data source"),
    "grace_period > max_epochs": (with_change("scheduler.grace_period", 99), "scheduler.grace_period", "grace_period (99)"),
    "patience 0": (with_change("scheduler.patience", 0), "scheduler.patience", "whole number of epochs >= 1"),
    "patience fractional": (with_change("scheduler.patience", 2.5), "scheduler.patience", "got 2.5"),
    "patience true": (with_change("scheduler.patience", True), "scheduler.patience", "got True"),
    "patience text": (with_change("scheduler.patience", "3"), "scheduler.patience", "got '3'"),
    "missing name": (with_change("name", ...), "name", "required"),
    "metric not reported for task": (with_change("search.metric", "val_mae"), "search.metric", "not reported"),
    "mode against the metric": (with_change("search.mode", "max"), "search.mode", "must be min"),
    "distribution without type": (with_change("space.lr", {"low": 0.1, "high": 0.2}), "space.lr", "type"),
    "per_layer on a non-layer parameter": (
        with_change("space.dropout", {"type": "float", "low": 0.0, "high": 0.5, "per_layer": True}),
        "space.dropout.per_layer", "only units"),
    "fractional GPUs above one": (with_change("resources.gpus_per_trial", 1.5), "resources.gpus_per_trial", "one device"),
    # A trial trains on one device: a second whole GPU would sit idle while Ray counts it as busy.
    "two GPUs per trial": (with_change("resources.gpus_per_trial", 2), "resources.gpus_per_trial", "one device"),
    # A share whose memory on even the largest GPU cannot hold a CUDA process's own context and workspaces.
    "a GPU share too small for a context": (with_change("resources.gpus_per_trial", 0.002),
                                            "resources.gpus_per_trial", "cannot hold a CUDA process's own"),
    "a CPU share Ray cannot schedule": (with_change("resources.cpus_per_trial", 1e-9), "resources.cpus_per_trial",
                                        "greater than or equal to 0.0001"),
    # A batch of one row cannot train batch norm; such batches were skipped, reporting a training loss of 0.
    "batch size one with batch norm": (with_change("space.batch_size", 1), "space.batch_size", "norm: batch"),
    "batch size range from one with batch norm": (
        with_change("space.batch_size", {"type": "int", "low": 1, "high": 8}), "space.batch_size", "norm: batch"),
    "bad log_models": (with_change("tracking.log_models", "some"), "tracking.log_models", "all"),
    "unknown loss": (with_change("space.loss", "l1"), "space.loss", "mse, mae, huber"),
    "regression loss on a classifier": (with_change("space.loss", "mae"), "space.loss", "only regressions"),
}

REGRESSION = load_yaml("diabetes.yaml")


def test_batch_size_one_is_accepted_without_batch_norm():
    raw = copy.deepcopy(BASE)
    raw["space"].update(batch_size=1, norm={"type": "categorical", "choices": ["none", "layer"]})
    assert parse_config(raw).space["batch_size"] == 1
    raw["space"].pop("norm")  # the default norm: none
    parse_config(raw)


def test_searched_loss_needs_a_metric_comparable_across_losses():
    raw = copy.deepcopy(REGRESSION)
    raw["space"]["loss"] = {"type": "categorical", "choices": ["mse", "mae", "huber"]}
    raw["search"]["metric"] = "val_loss"
    with pytest.raises(ConfigError, match=r"^search.metric: val_loss is measured in each trial's own loss"):
        parse_config(raw)
    raw["search"]["metric"] = "val_mae"
    assert parse_config(raw).space["loss"].choices == ["mse", "mae", "huber"]
    raw["space"]["loss"], raw["search"]["metric"] = "huber", "val_loss"  # one fixed loss: val_loss still ranks
    parse_config(raw)


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_config_is_rejected_with_key_and_reason(case):
    raw, key, fragment = BAD_CASES[case]
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    message = str(info.value)
    assert message.startswith(key), message
    assert fragment in message, message
    assert "\n" not in message


def test_conditional_cycle_is_rejected():
    raw = copy.deepcopy(BASE)
    raw["space"]["optimizer"]["if"] = {"momentum": 0.5}
    with pytest.raises(ConfigError, match="cycle"):
        parse_config(raw)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_reference_configs_are_valid(path):
    cfg = load_config(path)
    assert cfg.search.num_samples >= 1 and cfg.space


def test_defaults_and_inferred_mode():
    cfg = parse_config({"name": "x", "data": {"source": "sklearn:wine"}, "space": {"lr": 0.01},
                        "search": {"metric": "val_accuracy"}, "tracking": {"uri": "sqlite:///x.db"}})
    assert cfg.search.mode == "max"
    assert cfg.scheduler.type == "asha" and cfg.experiment_name == "x"
    assert cfg.tracking.log_models == "all"


def test_overrides_set_nested_values_parsed_as_yaml():
    raw = apply_overrides(copy.deepcopy(BASE), ["scheduler.type=fifo", "space.lr.high=0.5", "search.seed=7",
                                                "space.optimizer=adam"])
    cfg = parse_config(raw)
    assert cfg.scheduler.type == "fifo" and cfg.space["lr"].high == 0.5 and cfg.search.seed == 7
    assert cfg.space["optimizer"] == "adam"


def test_override_into_a_scalar_is_an_error():
    with pytest.raises(ConfigError, match="name"):
        apply_overrides(copy.deepcopy(BASE), ["name.x=1"])


def test_cli_validate_bad_config_exits_2_with_one_line(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(BAD_CASES["low >= high"][0]))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "space.lr" in err and "Traceback" not in err


def test_cli_validate_reports_yaml_syntax_and_missing_file(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nspace: {lr: [\n")
    assert main(["validate", str(path)]) == 2
    assert "line" in capsys.readouterr().err
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    latin = tmp_path / "latin.yaml"  # was a traceback (UnicodeDecodeError)
    latin.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    assert main(["validate", str(latin)]) == 2
    err = capsys.readouterr().err.strip()
    assert "not UTF-8" in err and err.count("\n") == 0 and "Traceback" not in err


def test_cli_run_rejects_bad_config_before_ray_starts(tmp_path):
    """As a real process: exit 2, one stderr line, and no Ray or MLflow started (nothing written)."""
    path = tmp_path / "bad.yaml"
    raw = with_change("scheduler.grace_period", 99)
    raw["tracking"]["uri"] = f"sqlite:///{tmp_path}/never.db"
    path.write_text(yaml.safe_dump(raw))
    proc = subprocess.run([sys.executable, "-m", "search.cli", "run", str(path), "--storage", str(tmp_path / "s")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "grace_period" in proc.stderr
    assert not (tmp_path / "never.db").exists() and not (tmp_path / "s").exists()


def test_loss_on_a_table_detected_as_classification_is_refused_once_the_task_is_known():
    from search.config.schema import check_metric_for_task

    raw = copy.deepcopy(REGRESSION)
    raw["data"] = {"source": "csv:any.csv", "target": "label", "task": "auto"}
    raw["space"]["loss"] = "mae"
    raw["search"]["metric"] = "val_loss"
    cfg = parse_config(raw)  # the task is not known until the file is read
    check_metric_for_task(cfg, "regression")
    with pytest.raises(ConfigError, match="^space.loss: only regressions"):
        check_metric_for_task(cfg, "binary")


@pytest.mark.parametrize("section,key,fragment", [
    ({"top_k": 0}, "evaluate.top_k", "greater than 0"),
    ({"top_k": "best"}, "evaluate.top_k", "integer"),
    ({"refit": "sometimes"}, "evaluate.refit", "boolean"),
    ({"ensemble": 3}, "evaluate.ensemble", "unknown key"),
])
def test_bad_evaluate_section(section, key, fragment):
    raw = {**copy.deepcopy(BASE), "evaluate": section}
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert str(info.value).startswith(key) and fragment in str(info.value), str(info.value)


def test_evaluate_defaults_to_the_single_best_trial_as_trained():
    raw = copy.deepcopy(BASE)
    assert raw.pop("evaluate") == {"top_k": 5}  # digits.yaml's own choice (docs/selection_study.md)
    cfg = parse_config(raw)
    assert cfg.evaluate.top_k == 1 and cfg.evaluate.refit is False


@pytest.mark.parametrize("split,evaluate,key,fragment", [
    ({"folds": 1}, None, "data.split.folds", "greater than or equal to 2"),
    ({"folds": 50}, None, "data.split.folds", "less than or equal to 20"),
    ({"folds": 5, "test": 0.92}, None, "data.split", "test = 0.92 leaves too little training data"),
    ({"folds": 5}, {"refit": False}, "evaluate.refit", "cannot go with data.split.folds: 5"),
])
def test_bad_cross_validation_settings(split, evaluate, key, fragment):
    raw = copy.deepcopy(BASE)
    raw["data"]["split"] = split
    if evaluate is not None:
        raw["evaluate"] = evaluate
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert str(info.value).startswith(key) and fragment in str(info.value), str(info.value)


def test_cross_validation_refits_by_default_and_does_not_use_val():
    cfg = load_config(CONFIGS / "auto_mpg.yaml", ["data.split.folds=5", "evaluate.refit=null"])
    assert cfg.data.split.folds == 5 and cfg.evaluate.refit is True
    assert parse_config(copy.deepcopy(BASE)).evaluate.refit is False  # the shared default is not changed
    # val + test would be too much, but with folds val is not used
    assert load_config(CONFIGS / "digits.yaml", ["data.split.val=0.5", "data.split.test=0.45", "data.split.folds=3"])


def test_trials_and_their_refit_share_one_training_seed():
    # search.seed: null randomizes the sampler; trials still train from seed 0, and the refit must use the same
    # (it once passed None, which hashes differently from 0 and changed the refit's initialization).
    raw = copy.deepcopy(BASE)
    raw.setdefault("search", {})["seed"] = None
    assert parse_config(raw).training_seed == 0
    raw["search"]["seed"] = 7
    assert parse_config(raw).training_seed == 7


def test_patience_is_off_by_default_and_set_in_epochs():
    assert parse_config(copy.deepcopy(BASE)).scheduler.patience is None
    cfg = parse_config(apply_overrides(copy.deepcopy(BASE), ["scheduler.patience=3", "scheduler.type=fifo"]))
    assert cfg.scheduler.patience == 3


def test_tell_in_order_is_off_by_default_and_a_boolean():
    assert parse_config(copy.deepcopy(BASE)).search.tell_in_order is False
    assert parse_config(with_change("search.tell_in_order", True)).search.tell_in_order is True
    with pytest.raises(ConfigError, match=r"^search.tell_in_order: "):
        parse_config(with_change("search.tell_in_order", "yes please"))
