"""Generated data files: each one loads, splits and yields trial data a network can take, or is refused with a
one-line DataError — never another exception (which `hps run` would show as a traceback).

The suite tries a bounded number of files (HPS_FUZZ_EXAMPLES, default 60); `HPS_FUZZ_EXAMPLES=2000 python -m
pytest tests/trainables/test_fuzz_data.py` runs a longer search."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainables.names import DataError
from trainables.splitting import split_dataset

EXAMPLES = int(os.environ.get("HPS_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

CELLS = st.one_of(
    st.integers(-5, 5).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", "NaN", "nan", "inf", "-inf", "1e300", "-1e300", "1e-320", "a", "é", "NA", "None", " ",
                     "0x1F", "1,5", '"q"', "TRUE"]),
)
# One thing a user's export may get wrong, per file (or nothing: a clean table that must load).
DEFECTS = ("none", "none", "binary", "empty", "header_only", "one_row", "one_class", "target_missing",
           "constant_column", "duplicate_names", "odd_cells", "ragged", "bom", "latin1", "utf16", "text_feature",
           "regression", "no_features")


@st.composite
def csv_files(draw) -> bytes:
    """A CSV table of numeric features and a target ``y`` (classes or numbers), with one defect drawn from DEFECTS
    applied: binary garbage, no rows, a header only, one row, one class, a target that is all missing, a constant
    or duplicate column, odd cells (NaN strings, 1e300, empty), ragged rows, another encoding, a text feature."""
    defect = draw(st.sampled_from(DEFECTS))
    if defect == "binary":
        return draw(st.binary(max_size=200))
    if defect == "empty":
        return b""
    n_rows = 1 if defect == "one_row" else draw(st.integers(8, 40))
    n_features = 0 if defect == "no_features" else draw(st.integers(1, 4))
    names = [f"f{i}" for i in range(n_features)] + ["y"]
    if defect == "duplicate_names" and n_features:
        names[0] = "y" if draw(st.booleans()) else names[-2]
    rows = []
    for index in range(n_rows if defect != "header_only" else 0):
        features = [repr(draw(st.floats(-1e3, 1e3))) for _ in range(n_features)]
        if defect == "constant_column" and features:
            features[0] = "7"
        if defect == "odd_cells" and features:
            features[draw(st.integers(0, n_features - 1))] = draw(CELLS)
        if defect == "text_feature" and features:
            features[0] = draw(st.sampled_from(["red", "green", "blue", "é"]))
        target = {"one_class": "1", "target_missing": "", "regression": repr(draw(st.floats(-50, 50)))}.get(
            defect, str(index % draw(st.integers(2, 3))))
        row = [*features, target]
        if defect == "ragged" and draw(st.booleans()):
            row = row[:-1] if len(row) > 1 and draw(st.booleans()) else [*row, "9"]
        rows.append(",".join(row))
    text = "\n".join([",".join(names), *rows]) + "\n"
    encoding = {"bom": "utf-8-sig", "latin1": "latin-1", "utf16": "utf-16"}.get(defect, "utf-8")
    return text.encode(encoding)


def loads_or_is_refused(source: str, **options) -> None:
    try:
        split = split_dataset(source, "auto", 0.2, 0.2, 0, **options)
    except DataError as exc:
        message = str(exc)
        assert message and "\n" not in message and "Traceback" not in message, message
        return
    data = split.trial_data()
    assert len(data.x_train) > 0 and data.x_train.shape[1] > 0
    assert np.isfinite(data.x_train).all() and np.isfinite(data.x_val).all()  # what a network is fed


@FUZZ
@given(content=csv_files())
def test_a_generated_csv_loads_or_is_refused_in_one_line(tmp_path, content):
    path = tmp_path / "table.csv"
    path.write_bytes(content)
    loads_or_is_refused(f"csv:{path}", target="y")


@FUZZ
@given(rows=st.integers(0, 12), features=st.integers(0, 4), dtype=st.sampled_from(["float64", "int8", "bool", "<U3",
                                                                                 "complex64", "float16"]),
       target=st.sampled_from(["float64", "int64", "<U2", "bool"]), nan=st.booleans())
def test_a_generated_npz_or_parquet_loads_or_is_refused_in_one_line(tmp_path, rows, features, dtype, target, nan):
    rng = np.random.default_rng(rows * 7 + features)
    x = rng.normal(size=(rows, features)).astype(dtype) if dtype != "<U3" else np.full((rows, features), "a")
    y = (rng.integers(0, 3, size=rows)).astype(target)
    if nan and rows and dtype == "float64" and features:
        x[0, 0] = np.nan
    npz = tmp_path / "data.npz"
    np.savez(npz, X=x, y=y)
    loads_or_is_refused(f"npz:{npz}")
    frame = pd.DataFrame(x,
                         columns=[f"f{i}" for i in range(features)])
    frame["y"] = y
    parquet = tmp_path / "data.parquet"
    try:
        frame.to_parquet(parquet)
    except Exception:  # noqa: BLE001 - a frame pyarrow cannot write (complex numbers): no file to test
        return
    loads_or_is_refused(f"parquet:{parquet}", target="y")


@pytest.mark.parametrize("content", [b"", b"y\n", b"x,y\n", b"x,y\n1,0\n", b"\xef\xbb\xbfx,y\n1,0\n2,1\n3,0\n4,1\n",
                                     b"x,y\n1,\n2,\n3,\n", b"x,x,y\n1,2,0\n3,4,1\n", b"\x00\x01\x02garbage"])
def test_the_edge_cases_the_generator_aims_at(tmp_path, content):
    path = tmp_path / "table.csv"
    path.write_bytes(content)
    loads_or_is_refused(f"csv:{path}", target="y")


def test_a_number_float32_cannot_hold_is_missing_not_infinite(tmp_path):
    # Found by the generator above: a 1e300 cell reached the network as inf (float32), and with it every output.
    rows = [f"{i % 7}.5,{i % 2}" for i in range(40)]
    rows[3] = "1e300,1"
    path = tmp_path / "table.csv"
    path.write_text("x,y\n" + "\n".join(rows) + "\n")
    split = split_dataset(f"csv:{path}", "auto", 0.2, 0.2, 0, target="y")
    data = split.trial_data()
    assert np.isfinite(data.x_train).all() and np.isfinite(data.x_val).all()
    assert abs(split.preprocessor.mean[0]) < 10  # imputed, not a mean of 1e298


def idx_bytes(magic: int, shape: tuple[int, ...], rng: np.random.Generator) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in shape)
    return header + rng.integers(0, 256, size=int(np.prod(shape)), dtype=np.uint8).tobytes()


@FUZZ
@given(images=st.integers(0, 30), labels_off=st.sampled_from([0, 0, 0, 1, -1]), side=st.integers(0, 4),
       cut=st.one_of(st.none(), st.integers(0, 400)), which=st.sampled_from(["images", "labels"]),
       gz=st.booleans(), bad_magic=st.booleans(), with_t10k=st.booleans())
def test_generated_idx_files_load_or_are_refused_in_one_line(tmp_path, images, labels_off, side, cut, which, gz,
                                                             bad_magic, with_t10k):
    """MNIST-style folders with one defect: a file cut short at any byte (gzipped or not), a wrong magic number,
    image and label counts that disagree, images of 0 pixels, no images at all, the t10k pair or not."""
    import gzip
    import tempfile
    from pathlib import Path

    rng = np.random.default_rng(images)
    folder = Path(tempfile.mkdtemp(dir=tmp_path))  # tmp_path is shared by the generated examples
    labels = max(images + labels_off, 0)
    files = {"train-images-idx3-ubyte": idx_bytes(2051, (images, side, side), rng),
             "train-labels-idx1-ubyte": idx_bytes(2049, (labels,), rng)}
    if with_t10k:
        files["t10k-images-idx3-ubyte"] = idx_bytes(2051, (5, side, side), rng)
        files["t10k-labels-idx1-ubyte"] = idx_bytes(2049, (5,), rng)
    damaged = f"train-{which}-idx{3 if which == 'images' else 1}-ubyte"
    if bad_magic:
        files[damaged] = (2049 if which == "images" else 2051).to_bytes(4, "big") + files[damaged][4:]
    for name, raw in files.items():
        raw = gzip.compress(raw) if gz else raw
        if name == damaged and cut is not None:
            raw = raw[:cut]
        (folder / (name + (".gz" if gz else ""))).write_bytes(raw)
    loads_or_is_refused(f"idx:{folder}")


def table_rows(n: int, cells=lambda i: f"{(i * 37) % 11 - 5}.25") -> list[str]:
    return [f"{cells(i)},{i % 3 * 0.5},{i % 2}" for i in range(n)]


# Defective tables as users export them, each through a whole `hps run`: those the loader accepts must run to the
# end with every run FINISHED; the others are refused in one line before any run exists.
WHOLE_SEARCH_TABLES = {
    "bom_odd_cells": ("\ufeffx,z,y\n" + "\n".join(table_rows(60, lambda i: ["NaN", "1e300", "", "inf"][i % 4]
                                                               if i % 9 == 0 else f"{i % 7}.5")) + "\n").encode(),
    "latin1_text_feature": ("x,couleur,y\n" + "\n".join(f"{i % 5}.5,{'éte' if i % 3 else 'hiver'},{i % 2}"
                                                         for i in range(60)) + "\n").encode("latin-1"),
    "ragged": ("x,z,y\n" + "\n".join(table_rows(60)[:30] + ["1.0,2.0"] + table_rows(60)[30:]) + "\n").encode(),
    "header_only": b"x,z,y\n",
    "target_missing": ("x,z,y\n" + "\n".join(r.rsplit(",", 1)[0] + "," for r in table_rows(40)) + "\n").encode(),
    "one_class": ("x,z,y\n" + "\n".join(r.rsplit(",", 1)[0] + ",1" for r in table_rows(40)) + "\n").encode(),
}


@pytest.mark.parametrize("kind", WHOLE_SEARCH_TABLES)
def test_a_defective_table_runs_a_whole_search_or_is_refused_before_it(kind, ray_session, mlflow_server, tmp_path,
                                                                     capsys):
    import yaml
    from mlflow.tracking import MlflowClient

    from search.cli import main

    table = tmp_path / "table.csv"
    table.write_bytes(WHOLE_SEARCH_TABLES[kind])
    name = f"fuzz-{kind.replace('_', '-')}"
    config = {"name": name, "data": {"source": f"csv:{table}", "target": "y", "split": {"val": 0.25, "test": 0.25}},
              "space": {"units": 8, "lr": {"type": "float", "low": 1e-3, "high": 1e-2}, "batch_size": 16},
              "search": {"num_samples": 2, "max_concurrent": 1}, "scheduler": {"max_epochs": 2, "grace_period": 1},
              "tracking": {"uri": mlflow_server, "review_plots": False}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    address = ray_session.get_runtime_context().gcs_address
    code = main(["run", str(path), "--address", address, "--storage", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    if code == 2:
        last = err.strip().splitlines()[-1]
        assert last.startswith("hps: error: ") and "Traceback" not in err, err[-2000:]
        assert not runs
    else:
        assert code == 0, err[-3000:]
        assert len(runs) == 3 and {r.info.status for r in runs} == {"FINISHED"}
    assert (code == 0) == (kind in ("bom_odd_cells", "ragged")), (code, err[-500:])
