"""Figure 1: samples/s of the trainable vs the course-notes training loop, same model, data, batch and epochs."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from trainables.model import architecture_from_params, build_mlp
from trainables.splitting import TrialData
from trainables.train import TrainSettings, make_optimizer, train_trial

# A mid-sized network of the digits space, at the batch size the target names.
PARAMS = {"n_layers": 2, "units": 128, "activation": "relu", "norm": "none", "dropout": 0.0,
          "optimizer": "adam", "lr": 1e-3, "batch_size": 64}


def course_loop(params: dict, data: TrialData, epochs: int, device: str) -> None:
    """The loop the course notes teach: TensorDataset + DataLoader(shuffle=True), per-batch step, per-epoch
    validation in the same batch size, ``loss.item()`` per batch for the running loss."""
    torch.manual_seed(0)
    arch = architecture_from_params(params, data.x_train.shape[1], len(data.preprocessor["classes"]))
    model = build_mlp(arch).to(device)
    optimizer = make_optimizer(params, model)
    loss_fn = nn.CrossEntropyLoss()
    train_loader = DataLoader(TensorDataset(torch.tensor(data.x_train), torch.tensor(data.y_train)),
                              batch_size=params["batch_size"], shuffle=True)
    val_loader = DataLoader(TensorDataset(torch.tensor(data.x_val), torch.tensor(data.y_val)),
                            batch_size=params["batch_size"])
    for _ in range(epochs):
        model.train()
        running = 0.0
        for xb, yb in train_loader:
            xb, yb = xb.to(device), yb.to(device)
            optimizer.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            optimizer.step()
            running += loss.item() * len(xb)
        model.eval()
        correct, val_loss = 0, 0.0
        with torch.no_grad():
            for xb, yb in val_loader:
                xb, yb = xb.to(device), yb.to(device)
                out = model(xb)
                val_loss += loss_fn(out, yb).item() * len(xb)
                correct += (out.argmax(1) == yb).sum().item()


def trainable(params: dict, data: TrialData, epochs: int, device: str) -> None:
    """``train_trial`` as a search runs it (validation, best-model copies, snapshots), reporting to nowhere."""
    settings = TrainSettings(max_epochs=epochs, metric="val_loss", device=device)
    train_trial(params, data, settings, lambda metrics, snapshot: None)


def _timed(fn, *args) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn(*args)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(data: TrialData, epochs: int, reps: int, device: str = "cpu", threads: int = 1) -> dict:
    """Both loops ``reps`` times, interleaved (alternating which goes first), after one warm-up each."""
    torch.set_num_threads(threads)
    trainable(PARAMS, data, 1, device)  # warm-up: first-call allocations, kernel selection
    course_loop(PARAMS, data, 1, device)
    samples = epochs * len(data.x_train)
    runs = []
    for rep in range(reps):
        order = [("ours", trainable), ("course", course_loop)]
        timings = {name: _timed(fn, PARAMS, data, epochs, device) for name, fn in (order if rep % 2 == 0 else order[::-1])}
        runs.append({"ours_samples_per_s": samples / timings["ours"], "course_samples_per_s": samples / timings["course"],
                     "ratio": timings["course"] / timings["ours"]})
    return {
        "device": str(device),
        "threads": threads,
        "params": PARAMS,
        "epochs": epochs,
        "n_train": len(data.x_train),
        "ours_samples_per_s": statistics.median(r["ours_samples_per_s"] for r in runs),
        "course_samples_per_s": statistics.median(r["course_samples_per_s"] for r in runs),
        "ratio": statistics.median(r["ratio"] for r in runs),
        "runs": runs,
    }
