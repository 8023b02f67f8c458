"""Small data files the data tests read: a car table like real ones (text columns, gaps, an id) and IDX images."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trainables.sources import IDX_FILES
from trainables.splitting import split_dataset

COLORS = ["red", "green", "blue"]


def car_table(n: int = 90, seed: int = 0) -> pd.DataFrame:
    """A small table like real ones: a categorical column, missing values, an id column, a numeric target."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "id": [f"row{i}" for i in range(n)],
        "weight": rng.normal(3000, 500, n).round(1),
        "cylinders": rng.choice([4, 6, 8], n),
        "color": rng.choice(COLORS, n, p=[0.5, 0.3, 0.2]),
        "kind": rng.choice(["a", "b"], n),
    })
    frame["price"] = 0.01 * frame["weight"] + 2.0 * frame["cylinders"] + rng.normal(0, 1, n)
    frame.loc[[3, 10, 20], "weight"] = np.nan
    frame.loc[[5, 6], "color"] = None
    frame.loc[[7, 8], "price"] = np.nan  # dropped, counted
    return frame


@pytest.fixture
def car_csv(tmp_path) -> Path:
    path = tmp_path / "cars.csv"
    car_table().to_csv(path, index=False)
    return path


def split_csv(path: Path, target: str = "price", task: str = "auto", **kw):
    return split_dataset(f"csv:{path}", task, 0.2, 0.2, 0, target=target, drop=kw.pop("drop", ["id"]), **kw)


def write_idx(directory: Path, n_train: int = 30, n_test: int = 10, gz: bool = False, side: int = 4) -> Path:
    """Tiny MNIST-style IDX files (labels 0-9 cycling, so every class has rows)."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, side, side), dtype=np.uint8)
        images[0, 0, 0], images[0, 0, 1] = 0, 255  # the extremes, to check the scaling
        labels = (np.arange(n) % 10).astype(np.uint8)
        image_name, label_name = IDX_FILES[split]
        write_idx_file(directory / image_name, 2051, images, gz)
        write_idx_file(directory / label_name, 2049, labels, gz)
    return directory


def write_idx_file(path: Path, magic: int, array: np.ndarray, gz: bool) -> None:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + array.tobytes()
    if gz:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
