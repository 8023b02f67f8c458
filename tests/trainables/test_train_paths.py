"""The trainable's alternative paths: streaming from host memory, torch.compile and its fallback."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from trainables import train
from trainables.splitting import split_dataset
from trainables.train import TrainSettings, train_trial

PARAMS = {"n_layers": 2, "units": 32, "lr": 3e-3, "optimizer": "adam", "batch_size": 32, "norm": "batch", "dropout": 0.1}


@pytest.fixture(scope="module")
def wine():
    return split_dataset("sklearn:wine", "auto", 0.15, 0.15, 0).trial_data()


def run(data, epochs=3, **kw):
    reports = []
    train_trial(PARAMS, data, TrainSettings(max_epochs=epochs, **kw), lambda m, s: reports.append(m))
    return reports


def test_streaming_from_host_memory_matches_the_resident_path(wine):
    assert run(wine, stream=True) == run(wine, stream=False)


def test_data_streams_only_when_it_does_not_fit_the_device(monkeypatch):
    assert train._fits_on_device(10**12, torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1000, 4000))
    assert train._fits_on_device(int(1000 * train.DEVICE_DATA_FRACTION), torch.device("cuda"))
    assert not train._fits_on_device(1000, torch.device("cuda"))


def test_compile_failure_falls_back_to_eager(wine, monkeypatch, caplog):
    def broken_compile(model, **kwargs):
        def call(*args):
            raise RuntimeError("no compiler here")
        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    with caplog.at_level(logging.WARNING, logger="trainables.train"):
        reports = run(wine, compile=True)
    assert "torch.compile failed" in caplog.text
    assert reports == run(wine, compile=False)


@pytest.mark.slow
def test_compiled_model_trains(wine):
    # Real inductor compilation on CPU (needs a C++ compiler; ~20 s the first time, cached afterwards).
    compiled, eager = run(wine, compile=True), run(wine, compile=False)
    assert [m["epoch"] for m in compiled] == [1, 2, 3]
    assert all(math.isfinite(m["val_loss"]) for m in compiled)
    assert compiled[-1]["val_loss"] == pytest.approx(eager[-1]["val_loss"], rel=0.1)
