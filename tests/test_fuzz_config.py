"""Generated invalid configs: `hps validate` always answers with exit 2 and one line, never a traceback."""

from __future__ import annotations

import copy

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from search.cli import main
from search.config import ConfigError, parse_config
from tests.conftest import load_yaml

BASE = load_yaml("digits.yaml")
JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(min_size=1, max_size=6), st.integers(), max_size=2),
)


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
@given(where=st.sampled_from(MAPPING_PATHS), key=st.text(min_size=1, max_size=10), value=JUNK)
def test_an_unknown_key_anywhere_is_rejected(tmp_path_factory, where, key, value):
    raw = copy.deepcopy(BASE)
    node = get(raw, where)
    if key in node:
        key = key + "_x"
    if where and where[0] == "space" and len(where) == 1:
        return  # a new key directly under space is a new hyperparameter: covered below
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
        parse_config(copy.deepcopy(raw))
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
