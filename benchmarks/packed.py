"""Packed trials: epochs/s of M trials trained as one pack (trainables.packed) vs the same M trials trained one after
another by train_trial, for M in MEMBERS, on the same data and device.

``python -m benchmarks.packed [--epochs N] [--device cuda]`` runs it alone on digits; ``python -m benchmarks
--parts packed`` runs it with the other figures. Needs no Ray and no MLflow.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from trainables.packed import Pack, pack_key
from trainables.splitting import TrialData
from trainables.train import TrainSettings, train_trial

MEMBERS = (1, 4, 8, 16)
# A slice of configs/digits.yaml's space whose trials pack: the choices that split packs are fixed, the rest vary
# (widths within one bucket, learning rate, weight decay, seed).
FIXED = {"n_layers": 2, "activation": "relu", "norm": "batch", "optimizer": "adam", "batch_size": 64, "dropout": 0.0}


def configurations(count: int, seed: int = 0, widths: tuple[int, int] = (17, 32), **fixed) -> list[dict]:
    """``count`` configurations of the packing slice (``fixed`` overrides FIXED), drawn reproducibly."""
    rng = random.Random(seed)
    return [{**FIXED, **fixed, "units_0": rng.randint(*widths), "units_1": rng.randint(*widths),
             "lr": 10 ** rng.uniform(-3.5, -2), "weight_decay": 10 ** rng.uniform(-6, -3)} for _ in range(count)]


def one_after_another(configs: list[dict], data: TrialData, epochs: int, device: str) -> None:
    for params in configs:
        train_trial(params, data, TrainSettings(max_epochs=epochs, device=device), lambda metrics, snapshot: None)


def as_one_pack(configs: list[dict], data: TrialData, epochs: int, device: str) -> None:
    pack = Pack(device)
    for index, params in enumerate(configs):
        pack.add(index, params, data, TrainSettings(max_epochs=epochs, device=device))
    while len(pack):
        pack.step()


def _timed(fn, *args) -> float:
    synchronize = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    synchronize()
    start = time.perf_counter()
    fn(*args)
    synchronize()
    return time.perf_counter() - start


def measure(data: TrialData, epochs: int = 3, reps: int = 1, members: tuple[int, ...] = MEMBERS,
            device: str = "cpu", threads: int = 1, widths: tuple[int, int] = (17, 32), **fixed) -> dict:
    """Epochs/s both ways for each pack size (median of ``reps``, alternating which goes first), after a warm-up.
    Both sides validate, track the best epoch and hand out snapshots exactly as a search would."""
    torch.set_num_threads(threads)
    configs = configurations(max(members), widths=widths, **fixed)
    assert len({pack_key(c, data, device) for c in configs}) == 1, "the benchmark's configurations must pack"
    one_after_another(configs[:1], data, 1, device)  # warm-up: first-call allocations, kernel selection
    as_one_pack(configs[:2], data, 1, device)
    rows = []
    for m in members:
        runs = []
        for rep in range(reps):
            order = [("sequential", one_after_another), ("packed", as_one_pack)]
            times = {name: _timed(fn, configs[:m], data, epochs, device) for name, fn in (order if rep % 2 == 0 else order[::-1])}
            runs.append(times)
        sequential = statistics.median(r["sequential"] for r in runs)
        packed = statistics.median(r["packed"] for r in runs)
        rows.append({"members": m, "sequential_epochs_per_s": m * epochs / sequential,
                     "packed_epochs_per_s": m * epochs / packed, "ratio": sequential / packed})
    return {"device": str(device), "threads": threads, "epochs": epochs, "n_train": len(data.x_train),
            "fixed": {**FIXED, **fixed}, "widths": list(widths), "rows": rows}


def table(result: dict) -> str:
    lines = [f"packed vs one after another, {result['device']}, {result['threads']} thread(s), "
             f"norm {result['fixed']['norm']}, {result['fixed']['optimizer']}, widths "
             f"{result['widths'][0]}-{result['widths'][1]}, {result['epochs']} epochs, {result['n_train']} rows",
             "| members | sequential epochs/s | packed epochs/s | ratio |", "|---|---|---|---|"]
    lines += [f"| {r['members']} | {r['sequential_epochs_per_s']:.1f} | {r['packed_epochs_per_s']:.1f} | "
              f"{r['ratio']:.2f}x |" for r in result["rows"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.packed", description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--members", default=",".join(map(str, MEMBERS)))
    parser.add_argument("--widths", default="17,32", help="range of hidden widths drawn (one bucket)")
    parser.add_argument("--norm", default=FIXED["norm"], choices=["none", "batch", "layer"])
    parser.add_argument("--optimizer", default=FIXED["optimizer"], choices=["adam", "adamw", "sgd"])
    args = parser.parse_args(argv)
    from trainables.splitting import split_dataset

    data = split_dataset("sklearn:digits", "auto", 0.15, 0.15, 0).trial_data()  # configs/digits.yaml's split
    low, high = (int(w) for w in args.widths.split(","))
    result = measure(data, args.epochs, args.reps, tuple(int(m) for m in args.members.split(",")), args.device,
                     args.threads, (low, high), norm=args.norm, optimizer=args.optimizer)
    print(table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
