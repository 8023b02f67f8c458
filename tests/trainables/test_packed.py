"""Packed training (trainables.packed) against the solo training loop: same metrics, snapshots, divergence, keys."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch

from trainables.checkpoint import load_checkpoint, save_checkpoint
from trainables.packed import CPU_MAX_WIDTH, Pack, pack_key, width_bucket
from trainables.reporting import STOPPED_NO_IMPROVEMENT
from trainables.splitting import split_dataset
from trainables.train import TrainSettings, make_optimizer, train_trial

EPOCHS = 4
ROWS = 480  # training rows kept: 8 batches of 64 (the last one short), so each epoch takes milliseconds


@pytest.fixture(scope="module")
def datasets():
    def shrink(data):
        return dataclasses.replace(data, x_train=data.x_train[:ROWS], y_train=data.y_train[:ROWS],
                                   x_val=data.x_val[:ROWS // 2], y_val=data.y_val[:ROWS // 2])

    return {src: shrink(split_dataset(f"sklearn:{src}", "auto", 0.2, 0.2, 0).trial_data())
            for src in ("digits", "breast_cancer", "diabetes")}


def solo(params, data, epochs=EPOCHS, resume=None, **settings):
    reports = []
    train_trial(params, data, TrainSettings(max_epochs=epochs, **settings), lambda m, s: reports.append((m, s)), resume)
    return reports


def packed(members, data, epochs=EPOCHS, leave=None, **settings):
    """Train ``members`` ({id: (params, join before step k)}) in one pack until it is empty; every member's reports.
    ``leave`` ({id: after step k}) removes members from outside."""
    pack, reports, step = Pack(), {member_id: [] for member_id in members}, 0
    while True:
        for member_id, (params, join) in members.items():
            if join == step:
                assert pack.add(member_id, params, data, TrainSettings(max_epochs=epochs, **settings))
        if not len(pack) and all(join <= step for _, join in members.values()):
            return reports, pack
        for member_id, report in pack.step().items():
            reports[member_id].append(report)
        step += 1
        for member_id, after in (leave or {}).items():
            if after == step:
                assert pack.remove(member_id)


# How close a packed member must stay to its solo run (the module docstring of trainables.packed says why):
# - float rounding: the pack's batched matmuls and the solo ones reduce in other orders; measured worst relative
#   difference over these tests 2e-7 on AVX-512, AVX2 and default kernels alike; asked to 1e-5.
# - amplified rounding (Adam or AdamW before batch norm, where a bias with a true gradient of zero takes full Adam
#   steps on its rounding noise): two legitimate solo runs, torch's fused and for-loop kernels, already differ by
#   up to 2e-2 in four epochs here (digits, lr 1e-3 to 1e-2); asked to 5e-2, which a wrong update still misses.
ROUNDING = {"rel": 1e-5, "abs": 1e-6}
AMPLIFIED = {"rel": 5e-2, "abs": 2e-2}


def tolerance(params: dict) -> dict:
    """The tolerance class of a configuration (see ROUNDING and AMPLIFIED)."""
    amplified = params.get("optimizer") in ("adam", "adamw") and params.get("norm") == "batch"
    return AMPLIFIED if amplified else ROUNDING


def assert_same_reports(alone, together, rel=1e-5, abs=1e-6):  # noqa: A002 - pytest.approx's own names
    assert len(alone) == len(together) > 0
    for (expected, expected_snapshot), (got, got_snapshot) in zip(alone, together):
        assert set(expected) == set(got)
        for key, value in expected.items():
            if isinstance(value, float):
                assert got[key] == pytest.approx(value, rel=rel, abs=abs), (key, expected["epoch"])
            elif key.startswith("best_epoch") and rel > ROUNDING["rel"]:
                continue  # amplified rounding may move the best epoch between two close epochs
            else:
                assert got[key] == value, key
        assert (expected_snapshot is None) == (got_snapshot is None)


BASE = {"n_layers": 2, "units_0": 32, "units_1": 32, "batch_size": 64, "activation": "relu", "dropout": 0.0}


@pytest.mark.parametrize("optimizer,norm,activation,widths", [
    # Batch norm with Adam amplifies rounding (see AMPLIFIED): checked loosely; the same with layer norm, tightly.
    ("adam", "batch", "relu", [(32, 32), (24, 32), (32, 24)]),
    ("adam", "layer", "relu", [(32, 32), (24, 32), (32, 24)]),
    ("adamw", "layer", "gelu", [(32, 32), (20, 27), (17, 32)]),
    ("sgd", "batch", "tanh", [(32, 32), (20, 27), (32, 17)]),
    ("adam", "none", "elu", [(64, 32), (40, 20), (33, 30)]),
])
def test_each_member_trains_as_it_would_alone(datasets, optimizer, norm, activation, widths):
    data = datasets["digits"]
    hyper = [{"lr": 3e-3}, {"lr": 1e-2, "weight_decay": 1e-3, "momentum": 0.5}, {"lr": 1e-3, "weight_decay": 1e-4}]
    configs = {f"m{i}": {**BASE, "optimizer": optimizer, "norm": norm, "activation": activation,
                         "units_0": w0, "units_1": w1, **h} for i, ((w0, w1), h) in enumerate(zip(widths, hyper))}
    # m2 joins two epochs later than the others: its epochs run beside their epochs 3 and 4
    together, _ = packed({"m0": (configs["m0"], 0), "m1": (configs["m1"], 0), "m2": (configs["m2"], 2)}, data)
    for member_id, params in configs.items():
        assert_same_reports(solo(params, data), together[member_id], **tolerance(params))


@pytest.mark.parametrize("source,extra", [("breast_cancer", {}), ("diabetes", {"loss": "huber"})])
def test_binary_and_regression_members_train_as_alone(datasets, source, extra):
    data = datasets[source]
    configs = {"a": {**BASE, "optimizer": "adam", "norm": "layer", "lr": 3e-3, **extra},
               "b": {**BASE, "optimizer": "adam", "norm": "layer", "lr": 1e-2, "units_1": 20, **extra}}
    together, _ = packed({k: (p, 0) for k, p in configs.items()}, data, metric="val_loss")
    for member_id, params in configs.items():
        assert_same_reports(solo(params, data, metric="val_loss"), together[member_id])


def test_a_member_that_leaves_does_not_change_the_others(datasets):
    data = datasets["digits"]
    configs = {name: {**BASE, "optimizer": "adam", "norm": "layer", "lr": lr} for name, lr in
               (("stay", 3e-3), ("go", 1e-2), ("also", 1e-3))}
    together, pack = packed({k: (p, 0) for k, p in configs.items()}, data, leave={"go": 2})
    assert len(together["go"]) == 2 and len(pack) == 0 and not pack.remove("go")
    for member_id in ("stay", "also"):
        assert_same_reports(solo(configs[member_id], data), together[member_id])


def test_a_diverging_member_ends_alone(datasets):
    data = datasets["diabetes"]
    calm = {**BASE, "optimizer": "sgd", "momentum": 0.9, "norm": "none", "lr": 1e-3}
    wild = {**calm, "lr": 1e6}
    together, _ = packed({"calm": (calm, 0), "wild": (wild, 0)}, data, epochs=6, metric="val_rmse")
    alone_wild = solo(wild, data, epochs=6, metric="val_rmse")
    assert "diverged" in alone_wild[-1][0] and len(alone_wild) < 6
    assert_same_reports(alone_wild, together["wild"])  # the same last report, at the same epoch
    assert_same_reports(solo(calm, data, epochs=6, metric="val_rmse"), together["calm"])


def test_a_packed_snapshot_resumes_alone_and_a_solo_snapshot_resumes_packed(datasets, tmp_path):
    data = datasets["digits"]
    # Batch norm (its running statistics travel in the snapshot) with SGD and momentum (its buffer does too), where
    # rounding is not amplified, so resuming can be compared closely.
    params = {**BASE, "optimizer": "sgd", "momentum": 0.9, "norm": "batch", "units_1": 24, "lr": 3e-2}
    neighbour = {**params, "lr": 1e-2, "units_1": 32}
    uninterrupted = solo(params, data)
    first_two, _ = packed({"p": (params, 0), "n": (neighbour, 0)}, data, epochs=2)
    snapshot = first_two["p"][-1][1]
    # (a solo snapshot's optimizer state is live: the run that made it must stop there)
    solo_snapshot = solo(params, data, epochs=2)[-1][1]
    # the solo format exactly: the same keys, shapes, optimizer layout and (up to rounding) values
    assert set(snapshot.state) == set(solo_snapshot.state) and snapshot.description == solo_snapshot.description
    assert snapshot.state["epoch"] == 2 and snapshot.state["best_epoch"] == solo_snapshot.state["best_epoch"]
    assert list(snapshot.state["model"]) == list(solo_snapshot.state["model"])
    for key, tensor in solo_snapshot.state["model"].items():
        assert snapshot.state["model"][key].shape == tensor.shape and snapshot.state["model"][key].dtype == tensor.dtype
        assert torch.allclose(snapshot.state["model"][key].float(), tensor.float(), atol=1e-5), key
    packed_opt, solo_opt = snapshot.state["optimizer"], solo_snapshot.state["optimizer"]
    assert packed_opt["param_groups"] == solo_opt["param_groups"]
    for index, state in solo_opt["state"].items():
        assert set(packed_opt["state"][index]) == set(state)
        for name, tensor in state.items():
            assert torch.allclose(packed_opt["state"][index][name], tensor, atol=1e-6), (index, name)
            assert packed_opt["state"][index][name].is_contiguous()  # fused optimizers read raw memory
    save_checkpoint(tmp_path, snapshot.state, snapshot.description)
    resumed = solo(params, data, resume=load_checkpoint(tmp_path))
    assert [m["epoch"] for m, _ in resumed] == [3, 4]
    assert_same_reports(uninterrupted[2:], resumed)
    # and the other way: a solo checkpoint joins a pack (beside a member at another epoch)
    pack = Pack()
    pack.add("n", neighbour, data, TrainSettings(max_epochs=EPOCHS))
    assert pack.add("p", params, data, TrainSettings(max_epochs=EPOCHS), resume=copy.deepcopy(solo_snapshot.state))
    rest = [pack.step()["p"] for _ in range(2)]
    assert_same_reports(uninterrupted[2:], rest)


def test_a_finished_checkpoint_does_not_join(datasets):
    data = datasets["digits"]
    params = {**BASE, "optimizer": "adam", "norm": "none"}
    last = solo(params, data, epochs=2)[-1][1]
    assert not Pack().add("done", params, data, TrainSettings(max_epochs=2), resume=last.state)


@pytest.mark.parametrize("norm,activation", [("layer", "silu"), ("batch", "elu"), ("none", "gelu")])
def test_padded_units_stay_exactly_zero(datasets, norm, activation):
    data = datasets["digits"]
    narrow = {**BASE, "optimizer": "adamw", "norm": norm, "activation": activation, "units_0": 24, "units_1": 24,
              "weight_decay": 1e-2, "lr": 1e-2}
    pack = Pack()
    pack.add("wide", {**narrow, "units_0": 32, "units_1": 32}, data, TrainSettings(max_epochs=3))
    pack.add("narrow", narrow, data, TrainSettings(max_epochs=3))
    pack_reports = [pack.step()["narrow"] for _ in range(2)]
    w0, w1, w2 = (pack.params[f"w{i}"].detach()[1] for i in range(3))
    assert w0.shape == (64, 32) and w1.shape == (32, 32)
    assert torch.all(w0[:, 24:] == 0) and torch.all(w1[24:, :] == 0) and torch.all(w1[:, 24:] == 0)
    assert torch.all(w2[24:, :] == 0) and torch.any(w1[:24, :24] != 0)
    for name in ("b0", "g0", "n0") if norm != "none" else ("b0",):
        assert torch.all(pack.params[name].detach()[1, :, 24:] == 0), name
    # and the narrow member computes what it would alone
    assert_same_reports(solo(narrow, data, epochs=3)[:2], pack_reports, **tolerance(narrow))


def test_dropout_members_pack_without_disturbing_the_others(datasets):
    data = datasets["digits"]
    plain = {**BASE, "optimizer": "adam", "norm": "layer", "lr": 3e-3}
    together, _ = packed({"plain": (plain, 0), "dropout": ({**plain, "dropout": 0.3}, 0)}, data, epochs=3)
    assert_same_reports(solo(plain, data, epochs=3), together["plain"])
    # with dropout, packed and solo agree only statistically (the masks are drawn differently): it is applied
    # (the training loss is not the plain member's) and it learns about as well as alone
    packed_dropout = [m for m, _ in together["dropout"]]
    solo_dropout = [m for m, _ in solo({**plain, "dropout": 0.3}, data, epochs=3)]
    assert packed_dropout[0]["train_loss"] > together["plain"][0][0]["train_loss"]
    assert packed_dropout[-1]["train_loss"] < packed_dropout[0]["train_loss"]
    assert packed_dropout[-1]["val_accuracy"] == pytest.approx(solo_dropout[-1]["val_accuracy"], abs=0.1)


def test_pack_key_groups_what_packs_and_splits_the_rest(datasets):
    data = datasets["digits"]
    base = {**BASE, "optimizer": "sgd", "norm": "batch", "lr": 1e-2}
    key = pack_key(base, data)
    assert key is not None
    same = [{"lr": 0.5}, {"weight_decay": 1e-3}, {"momentum": 0.1}, {"dropout": 0.4}, {"units_0": 17, "units_1": 31}]
    for change in same:
        assert pack_key({**base, **change}, data) == key, change
    assert pack_key(base, copy.deepcopy(data)) == key  # a copy of the same data (as each Ray worker gets)
    split = [{"n_layers": 3, "units_2": 32}, {"activation": "tanh"}, {"norm": "layer"}, {"optimizer": "adam"},
             {"batch_size": 32}, {"units_0": 33}, {"units_1": 16}]
    for change in split:
        assert pack_key({**base, **change}, data) not in (key, None), change
    assert pack_key(base, datasets["breast_cancer"]) != key
    assert pack_key({**base, "units_0": CPU_MAX_WIDTH + 1}, data) is None  # too wide to pay on a CPU
    assert pack_key({**base, "units_0": CPU_MAX_WIDTH + 1}, data, device="cuda") is not None
    assert pack_key(base, [data, data]) is None  # cross-validation folds train together in train_trial
    assert [width_bucket(w) for w in (1, 8, 9, 16, 17, 100, 128)] == [8, 8, 16, 16, 32, 128, 128]
    pack = Pack()
    pack.add("a", base, data, TrainSettings(max_epochs=2))
    with pytest.raises(ValueError, match="does not pack"):
        pack.add("b", {**base, "norm": "layer"}, data, TrainSettings(max_epochs=2))
    with pytest.raises(ValueError, match="already"):
        pack.add("a", base, data, TrainSettings(max_epochs=2))


def test_reports_follow_each_members_settings(datasets):
    data = datasets["digits"]
    params = {**BASE, "optimizer": "adam", "norm": "none"}
    pack = Pack()
    pack.add("short", params, data, TrainSettings(max_epochs=2, checkpoint_every=5))
    pack.add("long", {**params, "lr": 1e-2}, data, TrainSettings(max_epochs=3, metric="val_accuracy",
                                                                   decision_epochs=frozenset({1})))
    first, second, third = pack.step(), pack.step(), pack.step()
    assert first["short"][1] is None and second["short"][0]["finished"] and second["short"][1] is not None
    assert first["long"][1] is not None and "best_val_accuracy" in first["long"][0]  # decision epoch, own metric
    assert set(third) == {"long"} and third["long"][0]["finished"] and len(pack) == 0
    assert all(math.isfinite(r[0]["val_loss"]) for r in (first["short"], first["long"]))


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_the_pack_steps_each_member_as_torch_optim_would(datasets, optimizer):
    # One optimizer step of three members with their own coefficients, from the same weights and gradients, against
    # torch.optim's own optimizer (the for-loop kernel, the algorithm the pack writes out) on each member alone.
    # Twenty steps, so that bias corrections, momentum and weight decay all matter; compared to float rounding.
    data = datasets["digits"]
    base = {**BASE, "optimizer": optimizer, "norm": "batch", "units_1": 24}
    hyper = [{"lr": 1e-2, "weight_decay": 1e-3, "momentum": 0.9}, {"lr": 3e-3}, {"lr": 1e-1, "weight_decay": 1e-2}]
    configs = [{**base, **h} for h in hyper]
    pack = Pack()
    for index, params in enumerate(configs):
        pack.add(index, params, data, TrainSettings(max_epochs=3))
    alone = []
    for index, params in enumerate(configs):
        model = copy.deepcopy(pack.members[index].model)
        model.load_state_dict(pack.member_weights(index))
        reference = make_optimizer(params, model)
        for group in reference.param_groups:
            group["fused"], group["foreach"] = False, False
        alone.append((model, reference))
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        pack.flat.grad = torch.randn(pack.flat.shape, generator=generator)
        for index, (model, reference) in enumerate(alone):
            # each member's gradient, as its solo model would hold it (padded entries are never read)
            grads = _solo_grads(pack, index, pack.flat.grad[index])
            for p, g in zip(model.parameters(), grads):
                p.grad = g.clone()
            reference.step()
        pack._optimizer_step()  # noqa: SLF001 - the step under test
    for index, (model, _) in enumerate(alone):
        together = pack.member_weights(index)
        for key, tensor in model.state_dict().items():
            assert torch.allclose(together[key].float(), tensor.float(), rtol=1e-5, atol=1e-6), (optimizer, index, key)


def _solo_grads(pack, index, row):
    """A pack row (one member's flat gradient) in its solo model's parameter shapes."""
    from trainables.packed import _unpadded  # noqa: PLC0415 - the inverse of how the pack lays a member out

    member = pack.members[index]
    return [_unpadded(row[start : start + size].view(stacked), p.shape, transpose).contiguous()
            for (name, (_, transpose)), p in zip(pack.layout.items(), member.model.parameters())
            for start, size, stacked in [pack.offsets[name]]]


def test_a_member_out_of_patience_stops_alone_as_it_would_alone(datasets):
    data = datasets["digits"]
    eager = {**BASE, "optimizer": "sgd", "norm": "none", "lr": 3.0, "momentum": 0.9}  # noisy: soon stops improving
    steady = {**eager, "lr": 1e-2}
    together, _ = packed({"eager": (eager, 0), "steady": (steady, 0)}, data, epochs=8, patience=2)
    alone = solo(eager, data, epochs=8, patience=2)
    assert STOPPED_NO_IMPROVEMENT in alone[-1][0] and len(alone) < 8 and alone[-1][1] is not None
    assert_same_reports(alone, together["eager"])
    assert_same_reports(solo(steady, data, epochs=8, patience=2), together["steady"])


def test_members_with_batch_size_one_train_every_row_as_alone(datasets):
    data = dataclasses.replace(datasets["digits"], x_train=datasets["digits"].x_train[:97],
                               y_train=datasets["digits"].y_train[:97])
    configs = {name: {**BASE, "batch_size": 1, "optimizer": "sgd", "norm": "none", "lr": lr}
               for name, lr in (("a", 1e-2), ("b", 3e-3))}
    together, _ = packed({k: (p, 0) for k, p in configs.items()}, data, epochs=2)
    for member_id, params in configs.items():
        alone = solo(params, data, epochs=2)
        assert alone[0][0]["train_loss"] > 0
        assert_same_reports(alone, together[member_id], **tolerance(params))
