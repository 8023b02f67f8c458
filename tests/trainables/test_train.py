"""The training loop on its own (no Ray, no MLflow): each task, checkpoints, resume, divergence, seeds."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from trainables.checkpoint import load_checkpoint, load_model, save_checkpoint, save_ensemble
from trainables.model import build_mlp
from trainables.splitting import split_dataset
from trainables.train import TrainSettings, batch_slices, train_epochs, train_trial

PARAMS = {"n_layers": 2, "units": 32, "lr": 3e-3, "optimizer": "adam", "batch_size": 32, "norm": "batch", "dropout": 0.1}


@pytest.fixture(scope="module")
def datasets():
    return {src: split_dataset(f"sklearn:{src}", "auto", 0.15, 0.15, 0) for src in ("wine", "breast_cancer", "diabetes")}


def run(data, params=PARAMS, epochs=1, metric="val_loss", resume=None, **kw):
    reports = []
    train_trial(params, data, TrainSettings(max_epochs=epochs, metric=metric, **kw), lambda m, s: reports.append((m, s)), resume)
    return reports


@pytest.mark.parametrize("source,task,metrics", [
    ("wine", "multiclass", {"val_accuracy", "val_f1"}),
    ("breast_cancer", "binary", {"val_accuracy", "val_f1"}),
    ("diabetes", "regression", {"val_mae", "val_rmse", "val_r2"}),
])
def test_one_epoch_on_each_task(datasets, source, task, metrics):
    split = datasets[source]
    assert split.task == task
    (report, snapshot), = run(split.trial_data())
    assert report["epoch"] == 1 and report["finished"] is True  # max_epochs=1: the first epoch is the last
    assert metrics | {"train_loss", "val_loss", "best_val_loss", "best_epoch"} <= set(report)
    assert all(math.isfinite(report[m]) for m in metrics)
    assert snapshot is not None and snapshot.state["epoch"] == 1


def test_training_learns(datasets):
    reports = run(datasets["breast_cancer"].trial_data(), epochs=15)
    assert reports[-1][0]["finished"] and reports[-1][0]["val_accuracy"] > 0.9
    assert reports[-1][0]["train_loss"] < reports[0][0]["train_loss"]


def test_regression_errors_are_in_original_units(datasets):
    split = datasets["diabetes"]
    report = run(split.trial_data(), epochs=3)[-1][0]
    # Diabetes targets range ~25-346; an MAE in standardized units would be below 2.
    assert report["val_mae"] > 10 and split.preprocessor.target_scale > 50


def test_test_split_never_reaches_trials(datasets):
    split = datasets["wine"]
    data = split.trial_data()
    n = len(split.table.target)
    assert len(data.x_train) + len(data.x_val) + len(split.test_idx) == n
    assert not set(split.test_idx) & (set(split.train_idx) | set(split.val_idx))
    # standardization uses training rows only: train columns have mean 0, validation ones need not
    assert np.allclose(data.x_train.mean(axis=0), 0, atol=1e-5)


def test_same_params_and_seed_train_identically(datasets):
    data = datasets["wine"].trial_data()
    first = [m["val_loss"] for m, _ in run(data, epochs=3)]
    second = [m["val_loss"] for m, _ in run(data, epochs=3)]
    assert first == second


def test_resume_from_checkpoint_continues_the_epochs(datasets, tmp_path):
    data = datasets["wine"].trial_data()
    full = run(data, epochs=4)
    first_two = run(data, epochs=2)
    save_checkpoint(tmp_path, first_two[-1][1].state, first_two[-1][1].description)
    rest = run(data, epochs=4, resume=load_checkpoint(tmp_path))
    assert [m["epoch"] for m, _ in rest] == [3, 4]
    assert rest[-1][0]["best_epoch"] >= 1
    # same batches, same starting weights: the resumed run matches the uninterrupted one closely
    assert rest[-1][0]["val_loss"] == pytest.approx(full[-1][0]["val_loss"], rel=0.2)


def test_best_epoch_model_is_saved_and_rebuilt(datasets, tmp_path):
    data = datasets["wine"].trial_data()
    reports = run(data, epochs=3)
    snapshot = [s for _, s in reports if s is not None][-1]
    save_checkpoint(tmp_path, snapshot.state, snapshot.description)
    model, description = load_model(tmp_path / "model")
    assert description["epoch"] == reports[-1][0]["best_epoch"]
    assert description["preprocessor"]["classes"] == ["class_0", "class_1", "class_2"]
    with torch.inference_mode():
        out = model(torch.tensor(data.x_val))
    assert out.shape == (len(data.x_val), 3)


def test_ensemble_artifact_round_trip(datasets, tmp_path):
    data = datasets["wine"].trial_data()
    folders = []
    for seed in (1, 2):
        snapshot = [s for _, s in run(data, epochs=2, seed=seed) if s is not None][-1]
        save_checkpoint(tmp_path / f"trial{seed}", snapshot.state, snapshot.description)
        folders.append(tmp_path / f"trial{seed}" / "model")
    prep = json.loads((folders[0] / "model.json").read_text())["preprocessor"]
    save_ensemble(tmp_path / "ensemble", folders, {"preprocessor": prep})
    ensemble, description = load_model(tmp_path / "ensemble")
    x = torch.tensor(data.x_val)
    with torch.inference_mode():
        mean_probs = torch.stack([torch.softmax(load_model(f)[0](x), dim=1) for f in folders]).mean(dim=0)
        assert torch.allclose(torch.softmax(ensemble(x), dim=1), mean_probs, atol=1e-6)
    assert description["ensemble"] == ["member_0", "member_1"] and description["preprocessor"] == prep


def test_ensemble_member_names_cannot_leave_the_artifact(tmp_path):
    (tmp_path / "model.json").write_text(json.dumps({"ensemble": ["../elsewhere"], "preprocessor": {"task": "binary"}}))
    with pytest.raises(ValueError, match="invalid ensemble member"):
        load_model(tmp_path)


@pytest.fixture(scope="module")
def diabetes_folds():
    return split_dataset("sklearn:diabetes", "auto", 0.15, 0.15, 0, folds=4)  # 94, 94, 94, 93 rows


DETERMINISTIC = {**PARAMS, "dropout": 0.0}  # no dropout: no global RNG draws, so fold order cannot matter


def test_cross_validated_trial_reports_the_mean_over_folds(diabetes_folds, monkeypatch):
    folds = diabetes_folds.trial_folds()
    # Same seed for every fold: then each fold trains exactly as a trial on that fold alone would.
    monkeypatch.setattr("trainables.train.FOLD_SEED_STRIDE", 0)
    together = run(folds, params=DETERMINISTIC, epochs=3, metric="val_mae")
    alone = [run(fold, params=DETERMINISTIC, epochs=3, metric="val_mae") for fold in folds]
    sizes = np.array([len(f.y_val) for f in folds])
    for epoch in range(3):
        for key in ("val_mae", "val_rmse", "val_r2", "val_loss"):
            per_fold = np.array([reports[epoch][0][key] for reports in alone])
            assert together[epoch][0][key] == pytest.approx(float(per_fold @ sizes / sizes.sum()), rel=1e-6)
        # the spread of the ranked metric over the folds, as cross_val_score(...).std() would give it
        maes = np.array([reports[epoch][0]["val_mae"] for reports in alone])
        assert together[epoch][0]["val_mae_fold_std"] == pytest.approx(float(maes.std()), rel=1e-6)
        assert "val_mae_fold_std" not in alone[0][epoch][0]  # one split has no spread to report
    best = min(range(3), key=lambda e: together[e][0]["val_mae"])
    assert together[-1][0]["best_epoch"] == best + 1


def test_cross_validated_checkpoint_resumes_every_fold_and_keeps_the_first_folds_model(diabetes_folds, tmp_path):
    folds = diabetes_folds.trial_folds()
    full = run(folds, params=DETERMINISTIC, epochs=4, metric="val_mae")
    first_two = run(folds, params=DETERMINISTIC, epochs=2, metric="val_mae")
    snapshot = first_two[-1][1]
    assert len(snapshot.state["model"]) == len(snapshot.state["optimizer"]) == 4
    assert snapshot.description["cross_validation"] == {"fold": 1, "folds": 4}
    save_checkpoint(tmp_path, snapshot.state, snapshot.description)
    rest = run(folds, params=DETERMINISTIC, epochs=4, metric="val_mae", resume=load_checkpoint(tmp_path))
    assert [m["epoch"] for m, _ in rest] == [3, 4]
    assert rest[-1][0]["val_mae"] == pytest.approx(full[-1][0]["val_mae"], rel=1e-5)
    # the logged model is the first fold's, with the first fold's preprocessing
    model, description = load_model(tmp_path / "model")
    assert description["preprocessor"] == folds[0].preprocessor != folds[1].preprocessor
    with torch.inference_mode():
        assert model(torch.tensor(folds[0].x_val)).shape == (len(folds[0].x_val), 1)


def test_diverging_loss_ends_the_trial_with_a_reason(datasets):
    params = {**PARAMS, "lr": 1e6, "optimizer": "sgd", "momentum": 0.9, "norm": "none"}
    reports = run(datasets["diabetes"].trial_data(), params=params, epochs=20)
    last, snapshot = reports[-1]
    assert "training loss became" in last["diverged"] and f"epoch {last['epoch']}" in last["diverged"]
    assert last["val_loss"] == math.inf and not last["finished"] and snapshot is None
    assert len(reports) < 20


def test_train_epochs_trains_exactly_that_long_and_is_repeatable(datasets):
    data = datasets["wine"].refit_data()
    arch, weights = train_epochs(PARAMS, data, epochs=3, base_seed=7)
    _, again = train_epochs(PARAMS, data, epochs=3, base_seed=7)
    _, longer = train_epochs(PARAMS, data, epochs=4, base_seed=7)
    assert arch.n_features == data.x_train.shape[1] and arch.n_outputs == 3
    assert all(torch.equal(weights[k], again[k]) for k in weights)
    assert not all(torch.equal(weights[k], longer[k]) for k in weights)
    model = build_mlp(arch)
    model.load_state_dict(weights)
    with torch.inference_mode():
        accuracy = (model.eval()(torch.tensor(data.x_train)).argmax(dim=1).numpy() == data.y_train).mean()
    assert accuracy > 0.8  # it learned the rows it was given


def test_train_epochs_refuses_to_return_a_diverged_model(datasets):
    params = {**PARAMS, "lr": 1e6, "optimizer": "sgd", "momentum": 0.9, "norm": "none"}
    with pytest.raises(FloatingPointError, match="training loss became"):
        train_epochs(params, datasets["diabetes"].refit_data(), epochs=20)


def test_maximized_metric_tracks_the_highest_value(datasets):
    reports = run(datasets["wine"].trial_data(), epochs=5, metric="val_accuracy")
    values = [m["val_accuracy"] for m, _ in reports]
    assert reports[-1][0]["best_val_accuracy"] == max(values)


@pytest.mark.parametrize("loss,expected", [("mse", torch.nn.MSELoss), ("mae", torch.nn.L1Loss), ("huber", torch.nn.HuberLoss)])
def test_regression_trains_with_the_chosen_loss(datasets, loss, expected):
    from trainables.metrics import loss_function

    assert isinstance(loss_function("regression", loss), expected)
    first, last = (r[0] for r in run(datasets["diabetes"].trial_data(), {**PARAMS, "loss": loss}, epochs=4)[::3])
    assert last["train_loss"] < first["train_loss"]
    # An L1 training loss on standardized targets is the MAE in standard deviations: it must match val_mae's scale.
    if loss == "mae":
        scale = datasets["diabetes"].preprocessor.target_scale
        assert last["val_loss"] * scale == pytest.approx(last["val_mae"], rel=1e-4)


def test_classifier_refuses_a_regression_loss(datasets):
    with pytest.raises(ValueError, match="regression loss"):
        run(datasets["wine"].trial_data(), {**PARAMS, "loss": "mae"})


def test_patience_stops_after_n_epochs_without_improvement_and_keeps_the_best_model(datasets, monkeypatch):
    """scheduler.patience: the trial ends once its best value is `patience` epochs old; its last report says why and
    carries a checkpoint whose model is the best epoch's, which evaluation (and the refit's epoch count) use."""
    import trainables.train as train

    scripted = iter([1.0, 0.8, 0.9, 0.85, 0.7, 0.6])  # best at epoch 2; epochs 3 and 4 do not beat it
    weights_at = {}
    real_epoch = train._Fold.epoch

    def epoch(self, n, *args):
        loss, evaluation = real_epoch(self, n, *args)
        weights_at[n] = {k: v.clone() for k, v in self.model.state_dict().items()}
        return loss, {**evaluation, "val_loss": next(scripted)}

    monkeypatch.setattr(train._Fold, "epoch", epoch)
    reports = run(datasets["wine"].trial_data(), epochs=6, patience=2, checkpoint_every=100)
    assert [m["epoch"] for m, _ in reports] == [1, 2, 3, 4]
    last, snapshot = reports[-1]
    assert last["finished"] is False and last["best_epoch"] == 2 and last["best_val_loss"] == 0.8
    assert last["stopped_no_improvement"] == "no improvement of val_loss in 2 epochs (best at epoch 2)"
    assert all("stopped_no_improvement" not in m for m, _ in reports[:-1])
    assert snapshot is not None and snapshot.state["best_epoch"] == 2
    assert all(torch.equal(snapshot.state["best_model"][k], weights_at[2][k]) for k in weights_at[2])
    assert not all(torch.equal(snapshot.state["best_model"][k], weights_at[4][k]) for k in weights_at[4])


def test_patience_never_cuts_the_last_epoch_and_is_off_by_default(datasets, monkeypatch):
    import trainables.train as train

    real_epoch = train._Fold.epoch
    monkeypatch.setattr(train._Fold, "epoch", lambda self, *a: (real_epoch(self, *a)[0], {"val_loss": 1.0}))
    reports = run(datasets["wine"].trial_data(), epochs=3, patience=1)  # no epoch improves on the first
    assert [m["epoch"] for m, _ in reports] == [1, 2]
    assert reports[-1][0]["stopped_no_improvement"].endswith("(best at epoch 1)")
    reports = run(datasets["wine"].trial_data(), epochs=3, patience=2)  # would stop at 3, which is the last anyway
    assert [m["epoch"] for m, _ in reports] == [1, 2, 3] and reports[-1][0]["finished"]
    assert "stopped_no_improvement" not in reports[-1][0]
    reports = run(datasets["wine"].trial_data(), epochs=3)
    assert [m["epoch"] for m, _ in reports] == [1, 2, 3] and reports[-1][0]["finished"]


def test_every_row_trains_in_batches_of_at_least_two():
    # A last batch of one row joins the one before it: alone it breaks batch norm, dropped it never trains.
    assert batch_slices(129, 64) == [slice(0, 64), slice(64, 129)]
    assert batch_slices(128, 64) == [slice(0, 64), slice(64, 128)]
    assert batch_slices(130, 64) == [slice(0, 64), slice(64, 128), slice(128, 130)]
    assert batch_slices(3, 2) == [slice(0, 3)]
    assert batch_slices(1, 64) == [slice(0, 1)]  # a single training row still trains


def test_batch_size_one_trains_one_row_at_a_time(datasets):
    # It once skipped every batch (each a single row) and reported a training loss of 0.0 for an untrained model.
    data = datasets["breast_cancer"].trial_data()
    reports = run(data, params={**PARAMS, "batch_size": 1, "norm": "none", "dropout": 0.0}, epochs=2)
    first, last = reports[0][0], reports[-1][0]
    assert first["train_loss"] > 0 and last["train_loss"] < first["train_loss"]
    assert last["val_accuracy"] > 0.8
