"""Data sources: the dataset a ``data.source`` names, read into a :class:`Table` of feature columns and a target.

- ``sklearn:<name>``: a dataset bundled with scikit-learn (digits, wine, breast_cancer, iris, diabetes);
- ``csv:PATH`` / ``parquet:PATH``: a table; ``target`` names the column to predict;
- ``npz:PATH``: a NumPy archive with arrays ``X`` (rows x features, more dimensions are flattened) and ``y``;
- ``idx:DIR``: MNIST-style IDX files with the standard names (``train-images-idx3-ubyte``, ...,
  optionally ``.gz``); images are flattened and scaled to [0, 1].

Relative paths are resolved against the current working directory.
"""

from __future__ import annotations

import difflib
import gzip
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn import datasets as sk_datasets

from trainables.names import MAX_COLUMNS, SKLEARN_DATASETS, DataError, source_error, target_error

# How many close matches an unknown column name is answered with (never the whole header of a wide table).
CLOSE_MATCHES = 3
IDX_FILES = {  # split -> (images, labels), without the optional .gz
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "t10k": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC = 2051, 2049  # unsigned bytes, 3 and 1 dimensions


@dataclass
class Table:
    """A raw dataset: features as a DataFrame and the target as a Series, plus class names if known.

    ``standardize`` is False for data already on a common scale (IDX pixels in [0, 1]): standardizing each
    pixel on its own would blow up pixels that are almost always 0.
    """

    features: pd.DataFrame
    target: pd.Series
    class_names: list[str] | None = None
    standardize: bool = True


def load_table(
    source: str,
    *,
    target: str | None = None,
    features: Sequence[str] | None = None,
    drop: Sequence[str] | None = None,
    max_columns: int = MAX_COLUMNS,
) -> Table:
    """Load the dataset named by ``source`` and select its feature columns (``features`` minus ``drop``).

    More than ``max_columns`` feature columns is a :class:`DataError`; a CSV or Parquet file is refused from its
    header alone, before its rows are read.
    """
    error = source_error(source)
    if error:
        raise DataError(error)
    error = target_error(source, target)
    if error:
        raise DataError(f"data.target: {error}")
    kind, _, rest = source.partition(":")
    if kind == "sklearn":
        table = _load_sklearn(rest)
    elif kind == "idx":
        table = _load_idx(_existing(rest, directory=True))
    elif kind == "npz":
        table = _load_npz(_existing(rest))
    else:
        path = _existing(rest)
        _check_header(_read_header(kind, path), target, features, drop, max_columns)
        table = _split_target(_read_frame(kind, path), target)
    table = _select_features(table, features, drop)
    _check_width(len(table.features.columns), max_columns)
    return table


def _read_header(kind: str, path: Path) -> list[str]:
    """The column names of a CSV or Parquet file, without reading its rows."""
    try:
        if kind == "csv":
            return [str(c) for c in pd.read_csv(path, nrows=0).columns]
        import pyarrow.parquet as pq

        return [str(name) for name in pq.read_schema(path).names if not name.startswith("__index_level_")]
    except Exception as exc:  # parser errors come in many types; the user needs the file and the reason
        raise DataError(f"cannot read {kind} file {str(path)!r}: {reason(exc)}") from None


def _check_header(columns: list[str], target: str | None, features: Sequence[str] | None,
                  drop: Sequence[str] | None, max_columns: int) -> None:
    """The target exists and the feature columns are within ``max_columns``, judged from the header."""
    if target not in columns:
        raise DataError(f"target column {target!r} not found{_close_matches(str(target), columns)}")
    if features is None:  # with data.features the selection is checked once the table is read
        _check_width(len(set(columns) - {target} - set(drop or [])), max_columns)


def _check_width(n_columns: int, max_columns: int) -> None:
    if n_columns > max_columns:
        raise DataError(f"{n_columns} feature columns is above the limit of {max_columns}: choose some (data.features "
                        f"or data.drop), or raise limits.max_columns if the network should take them all")


def _close_matches(name: str, columns: Sequence[str]) -> str:
    """``; did you mean 'age', 'wage'? (412 columns)``: at most a few similar names, never the whole header."""
    matches = difflib.get_close_matches(name, list(columns), n=CLOSE_MATCHES, cutoff=0.6)
    if not matches:  # a different case, or a prefix: still worth showing
        lowered = name.lower()
        matches = [c for c in columns if lowered in c.lower() or c.lower() in lowered][:CLOSE_MATCHES]
    suggestion = f"; did you mean {', '.join(map(repr, matches))}?" if matches else ""
    return f"{suggestion} ({len(columns)} column(s))"


def _existing(path: str, directory: bool = False) -> Path:
    resolved = Path(path).expanduser()
    if not path or not resolved.exists():
        raise DataError(f"data {'directory' if directory else 'file'} {path!r} does not exist")
    if directory and not resolved.is_dir():
        raise DataError(f"idx: needs a directory with the IDX files, got the file {path!r}")
    if not directory and resolved.is_dir():
        raise DataError(f"{path!r} is a directory, not a data file")
    return resolved


def _load_sklearn(name: str) -> Table:
    bunch = getattr(sk_datasets, f"load_{name}")(as_frame=True)
    classified = SKLEARN_DATASETS[name] != "regression"
    names = [str(n) for n in bunch.target_names] if hasattr(bunch, "target_names") and classified else None
    return Table(features=bunch.data, target=bunch.target, class_names=names)


def _read_frame(kind: str, path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path) if kind == "csv" else pd.read_parquet(path)
    except UnicodeDecodeError as exc:  # Latin-1 / cp1252 exports: say what to do, not the codec's words
        raise DataError(f"{kind} file {str(path)!r} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at "
                        f"position {exc.start}); save it as UTF-8 (spreadsheets: \"CSV UTF-8\")") from None
    except Exception as exc:  # parser errors come in many types; the user needs the file and the reason
        raise DataError(f"cannot read {kind} file {str(path)!r}: {reason(exc)}") from None


def reason(exc: Exception) -> str:
    """The first line of an exception's message (DataErrors are one line)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _split_target(frame: pd.DataFrame, target: str | None) -> Table:
    if target not in frame.columns:
        raise DataError(f"target column {target!r} not found{_close_matches(str(target), [str(c) for c in frame.columns])}")
    return Table(features=frame.drop(columns=[target]), target=frame[target])


def _load_npz(path: Path) -> Table:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except Exception as exc:  # a bad archive, or object arrays (pickle is refused)
        raise DataError(f"cannot read npz file {str(path)!r}: {reason(exc)}") from None
    if "X" not in arrays or "y" not in arrays:
        raise DataError(f"npz file {str(path)!r} needs arrays 'X' and 'y'; it has: {', '.join(arrays) or 'none'}")
    x, y = arrays["X"], arrays["y"]
    if x.ndim < 2 or y.ndim != 1 or len(x) != len(y):
        raise DataError(f"npz file {str(path)!r}: X must be (rows, features...) and y (rows,); got {x.shape} and {y.shape}")
    if len(x) == 0 or x[0].size == 0:
        raise DataError(f"npz file {str(path)!r} has no rows or no features: X is {x.shape}")
    x = x.reshape(len(x), -1)
    columns = [f"x{i}" for i in range(x.shape[1])]
    return Table(features=pd.DataFrame(x, columns=columns), target=pd.Series(y, name="y"))


def _load_idx(directory: Path) -> Table:
    """MNIST / Fashion-MNIST: the train files, plus the t10k files when present, as one table."""
    images, labels = [], []
    for split, names in IDX_FILES.items():
        found = [_idx_file(directory, name) for name in names]
        if split == "t10k" and found == [None, None]:
            continue  # the train files alone are a dataset too
        for name, path in zip(names, found):
            if path is None:
                raise DataError(f"IDX file {name}[.gz] not found in {str(directory)!r}")
        x, y = _read_idx(found[0], IDX_IMAGES_MAGIC), _read_idx(found[1], IDX_LABELS_MAGIC)
        if len(x) != len(y):
            raise DataError(f"IDX files in {str(directory)!r}: {names[0]} has {len(x)} images but {names[1]} {len(y)} labels")
        if len(x) == 0 or x[0].size == 0:  # found by tests/trainables/test_fuzz_data.py: numpy cannot reshape 0 images
            raise DataError(f"IDX file {str(found[0])!r} has no images or images of no pixels: shape {x.shape}")
        images.append(x.reshape(len(x), -1))
        labels.append(y)
    pixels = np.concatenate(images).astype(np.float32) / np.float32(255.0)
    columns = [f"px{i}" for i in range(pixels.shape[1])]
    return Table(
        features=pd.DataFrame(pixels, columns=columns),
        target=pd.Series(np.concatenate(labels).astype(np.int64), name="label"),
        standardize=False,
    )


def _idx_file(directory: Path, name: str) -> Path | None:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """An IDX file of unsigned bytes (``magic`` 2051 for images, 2049 for labels)."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:  # EOFError: cut short; zlib.error: corrupt data
        raise DataError(f"IDX file {str(path)!r} is not a readable gzip file ({exc})") from None
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    found = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if found != magic:
        raise DataError(f"IDX file {str(path)!r} has magic number {found}, expected {magic}")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(raw) != header + int(np.prod(shape)):
        raise DataError(f"IDX file {str(path)!r} is truncated or too long for shape {shape}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _select_features(table: Table, features: Sequence[str] | None, drop: Sequence[str] | None) -> Table:
    columns = [str(c) for c in table.features.columns]
    table.features.columns = columns
    target = str(table.target.name) if table.target.name is not None else None
    for key, names in (("data.features", features), ("data.drop", drop)):
        unknown = [n for n in names or [] if n not in columns and not (n == target and key == "data.drop")]
        if target is not None and target in (names or []) and key == "data.features":
            raise DataError(f"{key}: {target!r} is the target column, not a feature")
        if unknown:
            raise DataError(f"{key}: no column {unknown[0]!r}{_close_matches(unknown[0], columns)}"
                            + (f" (and {len(unknown) - 1} more unknown)" if len(unknown) > 1 else ""))
    keep = [c for c in (features or columns) if c not in set(drop or [])]
    if not keep:
        raise DataError("no feature columns left (data.features / data.drop remove them all)")
    table.features = table.features[keep]
    return table
