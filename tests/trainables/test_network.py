"""A user's own network without Ray or MLflow: the course notes' MLP and a CNN train in the shared loop, their code
is recorded beside the weights and loads from there alone, and every builder mistake is one line before anything
starts."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import sys
import textwrap

import pytest
import torch
import yaml

from search.cli import main as hps_main
from search.config.network import check_network, space_corners
from search.config.schema import ConfigError, load_config
from tests.conftest import CONFIGS
from tests.user_networks import COURSE_NOTES_MLP
from trainables.checkpoint import load_checkpoint, load_model, save_checkpoint
from trainables.network import NetworkError, read_network_code
from trainables.splitting import split_dataset
from trainables.train import TrainSettings, data_architecture, train_epochs, train_trial

LOOP = {"lr": 3e-3, "optimizer": "adam", "batch_size": 32}


@pytest.fixture(scope="module")
def splits():
    return {name: split_dataset(f"sklearn:{name}", "auto", 0.15, 0.15, 0)
            for name in ("wine", "breast_cancer", "diabetes", "digits")}


def code_of(tmp_path, text: str, name: str, input_shape=None, filename: str = "net.py"):
    (tmp_path / filename).write_text(textwrap.dedent(text))
    return read_network_code(f"{filename}:{name}", tmp_path, input_shape)


def train(data, code, params=LOOP, epochs=3, **kw):
    reports = []
    settings = TrainSettings(max_epochs=epochs, network=code.to_dict(), **kw)
    train_trial(params, data, settings, lambda m, s: reports.append((m, s)))
    return reports


@pytest.mark.parametrize("source", ["wine", "breast_cancer"])
def test_the_course_notes_mlp_trains_unchanged(splits, tmp_path, source):
    # Multiclass and binary: the binary task gets num_classes=2 and its two logits become the loop's one.
    code = code_of(tmp_path, COURSE_NOTES_MLP, "MultilayerPerceptron")
    reports = train(splits[source].trial_data(), code, epochs=8)
    last = reports[-1][0]
    assert last["val_accuracy"] > 0.85 and last["train_loss"] < reports[0][0]["train_loss"]
    n_features = splits[source].trial_data().x_train.shape[1]
    assert last["n_params"] == (n_features * 64 + 64) + (64 * 32 + 32) + (32 * 2 + 2 if source != "wine" else 32 * 3 + 3)


def test_binary_two_logits_are_softmax_exactly(tmp_path):
    code = code_of(tmp_path, COURSE_NOTES_MLP, "MultilayerPerceptron")
    arch = data_architecture({}, type("D", (), {"preprocessor": {"classes": ["a", "b"]}, "task": "binary",
                                               "x_train": torch.zeros(4, 5)})(), code.to_dict())
    model = arch.build().eval()
    x = torch.randn(7, 5)
    logits, _ = model.net(x)
    assert torch.allclose(torch.sigmoid(model(x)).squeeze(1), torch.softmax(logits, dim=1)[:, 1], atol=1e-6)


def test_a_cnn_sees_images_and_its_searched_arguments(splits, tmp_path):
    code = code_of(tmp_path, (CONFIGS / "networks" / "digits_cnn.py").read_text(), "DigitsCNN", input_shape=[1, 8, 8])
    params = {**LOOP, "channels": 8, "kernel_size": 5, "dropout": 0.1}
    data = splits["digits"].trial_data()
    arch = data_architecture(params, data, code.to_dict())
    assert arch.arguments == {"channels": 8, "kernel_size": 5, "dropout": 0.1}  # the loop's own stay the loop's
    assert arch.build().net.features[0].kernel_size == (5, 5)
    reports = train(data, code, params, epochs=4)
    assert reports[-1][0]["val_accuracy"] > 0.8


def test_a_function_builder_with_keyword_arguments_and_a_regression(splits, tmp_path):
    code = code_of(tmp_path, """
        import torch
        def build(n_features, n_outputs, **options):
            width = options.get("width", 16)
            return torch.nn.Sequential(torch.nn.Linear(n_features, width), torch.nn.Tanh(),
                                       torch.nn.Linear(width, n_outputs))
        """, "build")
    params = {**LOOP, "width": 24}
    data = splits["diabetes"].trial_data()
    assert data_architecture(params, data, code.to_dict()).arguments == {"width": 24}
    reports = train(data, code, params, epochs=3)
    assert math.isfinite(reports[-1][0]["val_mae"])


def test_the_model_folder_carries_the_code_and_loads_without_the_users_folder(splits, tmp_path, monkeypatch):
    user = tmp_path / "user"
    user.mkdir()
    code = code_of(user, COURSE_NOTES_MLP, "MultilayerPerceptron", filename="notes_mlp.py")
    split = splits["wine"]
    reports = train(split.trial_data(), code, epochs=2, checkpoint_every=1)
    metrics, snapshot = reports[-1]
    folder = tmp_path / "checkpoint"
    save_checkpoint(folder, snapshot.state, snapshot.description)
    assert (folder / "model" / "code" / "notes_mlp.py").read_text() == COURSE_NOTES_MLP  # for people to read
    assert snapshot.description["architecture"]["arguments"] == {}
    (user / "notes_mlp.py").unlink()  # the user's folder is gone: the model still loads, from its own record
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for name in [m for m in sys.modules if m.startswith("hps_network_")]:
        monkeypatch.delitem(sys.modules, name)  # as in a new process
    model, description = load_model(folder / "model")
    x = torch.tensor(split.trial_data().x_val[:5])
    with torch.no_grad():
        assert model(x).shape == (5, 3)
    assert load_checkpoint(folder)["best_epoch"] == metrics["best_epoch"]
    assert description["architecture"]["network"]["builder"] == "notes_mlp.py:MultilayerPerceptron"


def test_refit_retrains_the_same_network(splits, tmp_path):
    code = code_of(tmp_path, COURSE_NOTES_MLP, "MultilayerPerceptron")
    data = splits["wine"].trial_data()
    arch, weights = train_epochs(LOOP, data, 2, network=code.to_dict())
    assert arch.to_dict()["network"]["source"] == code.source and "net.linear_1.weight" in weights


def test_a_module_builder_imports_by_name(splits, tmp_path, monkeypatch):
    package = tmp_path / "mynets"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "mlp.py").write_text(COURSE_NOTES_MLP)
    monkeypatch.syspath_prepend(str(tmp_path))
    code = read_network_code("mynets.mlp:MultilayerPerceptron")
    assert code.module == "mynets.mlp" and code.filename == "mlp.py" and code.source == COURSE_NOTES_MLP
    assert train(splits["wine"].trial_data(), code, epochs=1)[0][0]["epoch"] == 1


def config_with(tmp_path, builder_text: str | None, builder="net.py:Net", space=None, **model):
    if builder_text is not None:
        (tmp_path / "net.py").write_text(textwrap.dedent(builder_text))
    raw = {"name": "own", "data": {"source": "sklearn:wine"}, "model": {"builder": builder, **model},
           "space": space or {"lr": {"type": "float", "low": 1e-3, "high": 1e-2}, "width": 8},
           "search": {"num_samples": 2}, "scheduler": {"max_epochs": 2, "grace_period": 1}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


NET = """
    import torch
    class Net(torch.nn.Module):
        def __init__(self, num_features, num_classes, width):
            super().__init__()
            self.layer = torch.nn.Linear(num_features, width)
            self.out = torch.nn.Linear(width, num_classes)
        def forward(self, x):
            return self.out(torch.relu(self.layer(x)))
    """
MISTAKES = {
    "missing file": (None, {}, r"file '.*net.py' does not exist"),
    "missing name": (NET, {"builder": "net.py:Nett"}, r"net.py has no class or function 'Nett'"),
    "not FILE:NAME": (NET, {"builder": "net.py"}, r"model.builder: 'net.py' must be FILE.py:NAME"),
    "a file that fails to run": ("import torch\nraise ImportError('no module named timm')\n", {},
                                 r"net.py fails to run: ImportError: no module named timm"),
    "a space key nobody takes": (NET, {"space": {"lr": 1e-3, "width": 8, "channels": 4}},
                                 r"space.channels: neither the training loop .* nor Net\(num_features, num_classes, "
                                 r"width\) takes it"),
    "a required parameter without a value": (NET, {"space": {"lr": 1e-3}},
                                             r"parameter 'width' has no default and no space entry"),
    "a builder that raises": (NET.replace("super().__init__()", "super().__init__(); assert width < 8, 'too wide'"),
                              {}, r"Net\(lr=0.001, width=8\) raised AssertionError: too wide|Net\(width=8\) raised"),
    "a wrong output width": (NET.replace("width, num_classes", "width, 5"), {},
                             r"output has shape \(4, 5\) for 4 rows; this task needs \(4, 3\)"),
    "a wrong output dimensionality": (NET.replace("return self.out(torch.relu(self.layer(x)))",
                                                  "return self.out(torch.relu(self.layer(x))).sum(1)"), {},
                                      r"output has shape \(4,\) for 4 rows; this task needs \(4, 3\)"),
    "an input shape that does not hold a row": (NET, {"input_shape": [1, 3, 3]},
                                                r"model.input_shape \[1, 3, 3\] holds 9 values, but the data has 13"),
    "a forward that fails": (NET.replace("torch.relu(self.layer(x))", "torch.relu(self.layer(x.view(-1, 2, 2)))"),
                             {}, r"forward pass on \(4, 13\) rows failed: RuntimeError"),
    "not a module": ("def Net(num_features, num_classes, width):\n    return 3\n", {},
                     r"Net\(...\) returned a int, not a torch.nn.Module"),
}


@pytest.mark.parametrize("mistake", MISTAKES)
def test_every_builder_mistake_is_one_line_before_anything_starts(tmp_path, mistake):
    text, options, message = MISTAKES[mistake]
    options = dict(options)
    space = options.pop("space", None)
    path = config_with(tmp_path, text, space=space, **options)
    try:
        cfg = load_config(path)
        check_network(cfg, split_dataset("sklearn:wine", "auto", 0.15, 0.15, 0))
    except (NetworkError, ConfigError) as exc:
        assert "\n" not in str(exc)
        assert re.search(message, str(exc)), str(exc)
    else:
        raise AssertionError(f"{mistake} was accepted")


def test_hps_validate_refuses_a_bad_builder_in_one_line_with_exit_2(tmp_path):
    path = config_with(tmp_path, NET, space={"lr": 1e-3, "width": 8, "depth": 3})
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = hps_main(["validate", str(path)])
    assert code == 2 and err.getvalue().count("\n") == 1 and "space.depth" in err.getvalue(), err.getvalue()


def test_the_builder_file_is_found_beside_the_config_from_any_working_directory(tmp_path, monkeypatch):
    path = config_with(tmp_path, NET)
    monkeypatch.chdir("/")
    cfg = load_config(path)
    assert cfg.model.builder == f"{tmp_path / 'net.py'}:Net"
    assert check_network(cfg).filename == "net.py"


def test_packing_a_users_network_is_refused(tmp_path):
    path = config_with(tmp_path, NET)
    with pytest.raises(ConfigError, match="resources.pack: 4 cannot go with model.builder"):
        load_config(path, ["resources.pack=4"])


def test_the_space_corners_are_its_extremes():
    cfg = load_config(CONFIGS / "digits_cnn.yaml")
    low, high = space_corners(cfg.space)
    assert low["channels"] == 16 and high["channels"] == 64 and low["kernel_size"] == 3 and high["kernel_size"] == 5
    assert low["lr"] == 1e-4 and high["lr"] == 1e-2


def test_every_shipped_network_config_checks_out_on_its_data():
    cfg = load_config(CONFIGS / "digits_cnn.yaml")
    split = split_dataset("sklearn:digits", "auto", 0.15, 0.15, 0)
    assert check_network(cfg, split).attribute == "DigitsCNN"
    assert os.path.isfile(cfg.model.builder.rpartition(":")[0])


def test_resuming_after_the_builder_file_changed_is_refused(tmp_path):
    # Trials resume from checkpoints of the network they trained; another network's code cannot load them.
    from search.records.storage import write_manifest
    from search.run.tuner import resume_search

    path = config_with(tmp_path, NET)
    cfg = load_config(path)
    storage = str(tmp_path / "runs")
    manifest = {"config": cfg.model_dump(mode="json", by_alias=True), "parent_run_id": "x", "experiment_id": "0",
                "tracking_uri": "sqlite:///x.db", "network_sha256": check_network(cfg).sha256}
    write_manifest(storage, "own", manifest)
    (tmp_path / "runs" / "own" / "tuner.pkl").write_bytes(b"")
    (tmp_path / "net.py").write_text(textwrap.dedent(NET).replace("torch.relu", "torch.tanh"))
    with pytest.raises(NetworkError, match=r"net.py changed since the search started"):
        resume_search("own", storage)


def test_a_module_builders_package_travels_with_the_champion(tmp_path, monkeypatch):
    from search.review.registry import network_module_paths

    package = tmp_path / "champion_nets"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "mlp.py").write_text(COURSE_NOTES_MLP)
    monkeypatch.syspath_prepend(str(tmp_path))
    model = tmp_path / "model" / "member_0"
    model.mkdir(parents=True)
    (model / "model.json").write_text(json.dumps({"architecture": {"network": {"module": "champion_nets.mlp"}}}))
    (tmp_path / "model" / "model.json").write_text(json.dumps({"ensemble": ["member_0"]}))
    assert network_module_paths(tmp_path / "model") == [str(package)]


def test_a_users_network_resumes_from_its_checkpoint_as_if_never_stopped(splits, tmp_path):
    # What `hps resume` does after a SIGKILL: the trial restarts from its last checkpoint, in a new process that
    # builds the network from the recorded code.
    code = code_of(tmp_path, (CONFIGS / "networks" / "digits_cnn.py").read_text(), "DigitsCNN", input_shape=[1, 8, 8])
    params = {**LOOP, "channels": 4, "kernel_size": 3, "dropout": 0.2}
    data = splits["digits"].trial_data()
    straight = []

    def report(metrics, snapshot):  # written when reported, as the Ray adapter does (the state is live)
        straight.append(metrics)
        if metrics["epoch"] == 2:
            save_checkpoint(tmp_path / "ckpt", snapshot.state, snapshot.description)

    train_trial(params, data, TrainSettings(max_epochs=4, network=code.to_dict(), checkpoint_every=2), report)
    for name in [m for m in sys.modules if m.startswith("hps_network_")]:
        del sys.modules[name]  # as in a new process
    resumed = []
    train_trial(params, data, TrainSettings(max_epochs=4, network=code.to_dict(), checkpoint_every=2),
                lambda m, s: resumed.append(m), load_checkpoint(tmp_path / "ckpt"))
    assert [m["epoch"] for m in resumed] == [3, 4]
    for before, after in zip(straight[2:], resumed):
        assert after["val_loss"] == pytest.approx(before["val_loss"], rel=1e-6)
