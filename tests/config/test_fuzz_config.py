"""Generated invalid configs: `hps validate` always answers with exit 2 and one line, never a traceback."""

from __future__ import annotations

import copy
import os

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from search.cli import main
from search.config.capacity import check_fits
from search.config.schema import ConfigError, parse_config
from tests.conftest import load_yaml

BASE = load_yaml("digits.yaml")
JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(min_size=1, max_size=6), st.integers(), max_size=2),
)


def known_keys() -> set[str]:
    """Every key some section of a config may hold (field names and their aliases)."""
    import pydantic

    from search.config import schema

    models = [m for m in vars(schema).values() if isinstance(m, type) and issubclass(m, pydantic.BaseModel)]
    return {f.alias or name for m in models for name, f in m.model_fields.items()} | {
        name for m in models for name in m.model_fields}


KNOWN_KEYS = known_keys()


def paths(node, prefix=()):
    """Every key path of a nested mapping."""
    for key, value in node.items():
        yield prefix + (key,)
        if isinstance(value, dict):
            yield from paths(value, prefix + (key,))


ALL_PATHS = list(paths(BASE))
def get(node, path):
    for key in path:
        node = node[key]
    return node


MAPPING_PATHS = [()] + [p for p in ALL_PATHS if isinstance(get(BASE, p), dict)]
# A new key directly under `space` is a new hyperparameter: tested on its own below.
SECTION_PATHS = [p for p in MAPPING_PATHS if p != ("space",)]


def run_validate(raw, tmp_path_factory) -> tuple[int, str]:
    path = tmp_path_factory.mktemp("fuzz") / "c.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True))
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["validate", str(path)])
    return code, err.getvalue()


def assert_one_line_error(code: int, err: str) -> None:
    assert code == 2, err
    assert err.startswith("hps: error: config: ") and err.count("\n") == 1, err
    assert "Traceback" not in err


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.sampled_from(SECTION_PATHS), key=st.text(min_size=1, max_size=10), value=JUNK)
def test_an_unknown_key_anywhere_is_rejected(tmp_path_factory, where, key, value):
    raw = copy.deepcopy(BASE)
    node = get(raw, where)
    while key in node or key in KNOWN_KEYS:  # a key the config knows (`if`, `model`, ...) is not unknown
        key = key + "_x"
    node[key] = value
    assert_one_line_error(*run_validate(raw, tmp_path_factory))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.text(min_size=1, max_size=10).filter(lambda k: k not in BASE["space"]), value=JUNK)
def test_an_unknown_hyperparameter_is_rejected(tmp_path_factory, key, value):
    raw = copy.deepcopy(BASE)
    raw["space"][key] = value
    assert_one_line_error(*run_validate(raw, tmp_path_factory))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.sampled_from(ALL_PATHS), value=JUNK)
def test_any_value_replaced_by_junk_gives_ok_or_a_clean_error(tmp_path_factory, where, value):
    raw = copy.deepcopy(BASE)
    get(raw, where[:-1])[where[-1]] = value
    try:
        check_fits(parse_config(copy.deepcopy(raw)))  # what `hps validate` checks: the config, and that it fits
        expected = 0
    except ConfigError:
        expected = 2
    code, err = run_validate(raw, tmp_path_factory)
    assert code == expected, err
    if code:
        assert_one_line_error(code, err)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=80))
def test_arbitrary_text_as_a_config_file(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("fuzz") / "c.yaml"
    path.write_text(text)
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["validate", str(path)])
    assert code == 2 and err.getvalue().count("\n") == 1 and "Traceback" not in err.getvalue()


CONFIG_TEXT = yaml.safe_dump(BASE, allow_unicode=True)


@st.composite
def config_files(draw) -> tuple[str, bytes]:
    """A config file as a user's editor may save it: the valid digits config in UTF-8 (plain or with a BOM),
    Latin-1 (with an accented name), UTF-16; cut short at any byte; or binary garbage, empty, whitespace."""
    kind = draw(st.sampled_from(["utf-8", "utf-8-sig", "latin-1", "utf-16", "cut", "binary", "empty", "spaces"]))
    if kind == "binary":
        return kind, draw(st.binary(max_size=300))
    if kind in ("empty", "spaces"):
        return kind, b"" if kind == "empty" else draw(st.sampled_from([b"  ", b"\n\n", b"# a comment\n", b"---\n"]))
    text = CONFIG_TEXT.replace("name: digits-mlp", "name: chiffres-\u00e9t\u00e9") if kind == "latin-1" else CONFIG_TEXT
    raw = text.encode("utf-8" if kind == "cut" else kind)
    return kind, raw[: draw(st.integers(0, len(raw)))] if kind == "cut" else raw


@settings(max_examples=int(os.environ.get("HPS_FUZZ_EXAMPLES", "40")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(file=config_files())
def test_a_config_file_in_any_encoding_or_cut_short_is_accepted_or_refused_in_one_line(tmp_path_factory, file):
    kind, raw = file
    path = tmp_path_factory.mktemp("fuzz") / "c.yaml"
    path.write_bytes(raw)
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["validate", str(path)])
    if code != 0:
        assert_one_line_error(code, err.getvalue())
    # A config cut short may still be whole YAML whose missing keys have defaults; these never are a config.
    assert code == 2 or kind in ("utf-8", "utf-8-sig", "cut", "binary"), (kind, raw[:80])
    assert code == 0 or kind not in ("utf-8", "utf-8-sig"), err.getvalue()


NUMERIC_KEYS = ["scheduler.reduction_factor", "scheduler.max_epochs", "scheduler.grace_period", "search.num_samples",
                "search.max_concurrent", "search.seed", "data.split.seed", "space.units.high", "space.n_layers.high",
                "space.lr.high", "space.lr.low", "space.dropout.high", "resources.cpus_per_trial",
                "training.checkpoint_every", "training.report_interval_s", "tracking.outage_wait_s"]
NUMBERS = st.one_of(st.integers(-10**30, 10**30), st.floats(allow_nan=True, allow_infinity=True),
                    st.floats(min_value=1.0, max_value=1.2))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(NUMERIC_KEYS), value=NUMBERS)
def test_any_number_anywhere_is_accepted_or_refused_at_once(tmp_path_factory, key, value):
    """Issue 14: no number makes `hps validate` (or what `hps run` then computes from the config) hang."""
    import time

    from search.run.ray_setup import asha_rungs

    raw = copy.deepcopy(BASE)
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:  # sections the digits config leaves out (training, tracking) are created
        node = node.setdefault(part, {})
    node[leaf] = value
    started = time.monotonic()
    code, err = run_validate(raw, tmp_path_factory)
    assert code in (0, 2) and time.monotonic() - started < 1.0, (code, err)
    if code:
        assert_one_line_error(code, err)
    else:
        started = time.monotonic()
        asha_rungs(parse_config(raw))
        assert time.monotonic() - started < 0.1
