"""Opening the tracking store: clear errors for a store that is not there; MLflow's global URIs left as they were."""

from __future__ import annotations

import os

import mlflow
import pytest

from search.errors import TrackingError
from search.records.connection import connect, fluent_uris


def test_a_missing_database_is_refused_for_reading_and_created_for_writing(tmp_path):
    uri = f"sqlite:///{tmp_path / 'typo.db'}"
    with pytest.raises(TrackingError, match="no tracking database"):
        connect(uri, existing=True)
    assert not (tmp_path / "typo.db").exists()
    connect(uri).search_experiments()
    assert (tmp_path / "typo.db").is_file()
    connect(uri, existing=True)  # now it is there


def test_a_database_in_a_missing_folder_or_an_unreachable_server_is_refused(tmp_path):
    with pytest.raises(TrackingError, match="does not exist"):
        connect(f"sqlite:///{tmp_path / 'no' / 'mlruns.db'}")
    with pytest.raises(TrackingError, match="unreachable"):
        connect("http://127.0.0.1:9")


@pytest.mark.parametrize("before", [None, "sqlite:///elsewhere.db"])
def test_fluent_uris_points_mlflow_at_a_store_for_the_block_only(tmp_path, monkeypatch, before):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", "sqlite:///registry.db")  # a caller's own setting, kept
    mlflow.set_tracking_uri(before)
    try:
        expected = mlflow.get_tracking_uri(), mlflow.get_registry_uri(), os.environ.get("MLFLOW_TRACKING_URI")
        uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
        with pytest.raises(RuntimeError), fluent_uris(uri):
            assert mlflow.get_tracking_uri() == uri and mlflow.get_registry_uri() == uri
            raise RuntimeError("restored on the way out of an error too")
        assert (mlflow.get_tracking_uri(), mlflow.get_registry_uri(), os.environ.get("MLFLOW_TRACKING_URI")) == expected
        assert os.environ["MLFLOW_REGISTRY_URI"] == "sqlite:///registry.db"
    finally:
        mlflow.set_tracking_uri(None)
