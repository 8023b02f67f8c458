"""The storage folder without Ray running: where a search's state goes, claiming a folder, the manifest, state files
written whole, a trial's results read back, which trials the saved experiment state records as ended, and
checkpoint pruning."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest

from search.errors import SearchExists, SearchNotFound, StorageError
from search.records.storage import (
    DEFAULT_STORAGE,
    checkpoint_of,
    claim_storage,
    delete_state,
    ended_in_saved_state,
    experiment_path,
    is_remote,
    pending_file,
    prune_checkpoints,
    read_manifest,
    read_results,
    read_state,
    state_exists,
    storage_dir,
    storage_flag,
    write_manifest,
    write_state,
)


def test_local_folders_are_made_absolute_and_uris_pass_through(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage_dir(None) == str(tmp_path / DEFAULT_STORAGE)
    assert storage_dir("runs") == str(tmp_path / "runs")
    assert storage_dir("s3://bucket/searches") == "s3://bucket/searches"
    assert is_remote("s3://bucket/x") and not is_remote(str(tmp_path)) and not is_remote("relative/path")
    assert storage_flag(storage_dir(None)) == ""
    assert storage_flag(str(tmp_path / "other")) == f" --storage {tmp_path / 'other'}"
    assert experiment_path("s3://bucket/searches/", "s") == "s3://bucket/searches/s"
    assert pending_file(str(tmp_path), "s") == f"{tmp_path}/s/mlflow-pending.json"


def test_claiming_refuses_an_existing_search_unless_overwritten(tmp_path):
    storage = str(tmp_path / "runs")
    claim_storage(storage, "s", overwrite=False)
    (tmp_path / "runs" / "s" / "left-over").write_text("x")
    with pytest.raises(SearchExists, match="hps resume s --storage"):
        claim_storage(storage, "s", overwrite=False)
    claim_storage(storage, "s", overwrite=True)
    assert list((tmp_path / "runs" / "s").iterdir()) == []


def test_claiming_storage_that_cannot_be_written_fails_before_anything_starts(tmp_path):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(StorageError, match="cannot be used"):
        claim_storage(str(tmp_path / "a_file" / "runs"), "s", overwrite=False)


def test_the_manifest_is_read_back_only_with_an_experiment_state_to_resume(tmp_path):
    storage = str(tmp_path)
    with pytest.raises(SearchNotFound, match="no search named 's'"):
        read_manifest(storage, "s")
    manifest = {"config": {"name": "s"}, "parent_run_id": "abc", "experiment_id": "1", "tracking_uri": "sqlite:///x"}
    write_manifest(storage, "s", manifest)
    with pytest.raises(SearchNotFound, match="no experiment state"):
        read_manifest(storage, "s")
    (tmp_path / "s" / "tuner.pkl").write_bytes(b"")  # what Tune's can_restore looks for
    assert read_manifest(storage, "s") == manifest


def test_state_files_are_replaced_whole(tmp_path):
    target = tmp_path / "deep" / "state.json"
    write_state(str(target), "first")
    write_state(str(target), "second")
    assert read_state(str(target)) == "second" and state_exists(str(target))
    assert [p.name for p in target.parent.iterdir()] == ["state.json"]
    delete_state(str(target))
    delete_state(str(target))  # already gone: no error
    assert not state_exists(str(target))


def test_a_trials_results_are_read_line_by_line_nested_epochs_kept(tmp_path):
    results = [{"epoch": 1, "val_loss": 0.9}, {"epoch": 3, "val_loss": 0.5, "earlier_epochs": [{"epoch": 2}]}]
    (tmp_path / "result.json").write_text("".join(json.dumps(r) + "\n" for r in results) + "\n")
    assert read_results(str(tmp_path)) == results
    assert read_results(str(tmp_path / "missing")) == [] and read_results(None) == []


def test_results_in_s3_storage_are_read_from_the_trials_own_filesystem(s3_bucket):
    """Tune's ``Trial.path`` on s3:// storage is ``bucket/...`` on the trial's S3 filesystem: read there, not as a
    local path (the repair of MLflow after a crash found no results in S3 before)."""
    _, s3 = s3_bucket
    results = [{"epoch": 1, "val_loss": 0.9}, {"epoch": 2, "val_loss": 0.7}]
    s3.create_dir("hps/searches/s/trial_a")
    with s3.open_output_stream("hps/searches/s/trial_a/result.json") as out:
        out.write("".join(json.dumps(r) + "\n" for r in results).encode())
    assert read_results("hps/searches/s/trial_a", s3) == results
    assert read_results("hps/searches/s/trial_a") == []  # the same path taken as local finds nothing
    assert read_results("hps/searches/s/missing", s3) == []


def test_ended_trials_are_those_the_newest_saved_state_records_as_ended(tmp_path):
    def save_state(name: str, statuses: dict[str, str], mtime: float) -> None:
        trial_data = [[json.dumps({"trial_id": t, "status": s}), "{}"] for t, s in statuses.items()]
        path = tmp_path / f"experiment_state-{name}.json"
        path.write_text(json.dumps({"trial_data": trial_data}))
        os.utime(path, (mtime, mtime))

    trial_dir = tmp_path / "trial_a"
    trial_dir.mkdir()
    assert ended_in_saved_state(str(trial_dir)) == set()
    save_state("old", {"a": "TERMINATED", "b": "TERMINATED", "c": "ERROR"}, 1_000)
    save_state("new", {"a": "TERMINATED", "b": "RUNNING", "c": "ERROR", "d": "PENDING"}, 2_000)
    assert ended_in_saved_state(str(trial_dir)) == {"a", "c"}
    (tmp_path / "experiment_state-new.json").write_text('{"trial_d')  # being rewritten: ask again later
    os.utime(tmp_path / "experiment_state-new.json", (3_000, 3_000))
    assert ended_in_saved_state(str(trial_dir)) == set()
    # read once per version (the driver asks at every step): written again, it is read again
    save_state("new", {"a": "TERMINATED", "b": "TERMINATED", "c": "ERROR", "d": "RUNNING"}, 4_000)
    assert ended_in_saved_state(str(trial_dir)) == {"a", "b", "c"}
    save_state("new", {"a": "TERMINATED", "b": "TERMINATED", "c": "ERROR", "d": "ERROR"}, 5_000)
    assert ended_in_saved_state(str(trial_dir)) == {"a", "b", "c", "d"}
    assert ended_in_saved_state("s3://bucket/s/trial_a") == set()


def test_pruning_removes_checkpoints_or_all_but_the_newest(tmp_path):
    for index in (1, 2, 3):
        (tmp_path / f"checkpoint_00000{index}").mkdir()
    (tmp_path / "result.json").write_text("{}\n")
    assert prune_checkpoints(str(tmp_path), keep_newest=True) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_000003", "result.json"]
    assert prune_checkpoints(str(tmp_path)) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]
    assert prune_checkpoints("s3://bucket/s/trial") == 0 and prune_checkpoints(None) == 0


def test_a_trials_checkpoint_is_found_by_its_folder():
    results = [SimpleNamespace(path="/runs/s/trial_fn_a1b2_00000_0_lr=0.1", checkpoint="first"),
               SimpleNamespace(path=None, checkpoint="never started"),
               SimpleNamespace(path="/runs/s/trial_fn_a1b2_00001_1_lr=0.2", checkpoint="second")]
    assert checkpoint_of(results, "a1b2_00001") == "second"
    assert checkpoint_of(results, "ffff_00000") is None


def test_resuming_against_a_server_without_the_search_says_so_in_one_line(tmp_path):
    # `hps resume --tracking-uri` naming another server: MLflow's "Run ... not found" used to escape as a traceback.
    from mlflow.tracking import MlflowClient

    from search.run.tuner import _parent_run
    from tests.stores import sqlite_store

    uri = sqlite_store(tmp_path / "other.db")
    with pytest.raises(SearchNotFound, match=r"^search 'digits': its parent run 0+ is not on the tracking server"):
        _parent_run(MlflowClient(uri), "0" * 32, "digits", uri)


def test_resuming_with_the_run_of_another_search_or_a_renamed_folder_is_refused_in_one_line(tmp_path):
    # A manifest naming a run that exists but is another search's parent (or a trial), and a search's folder copied
    # or renamed to another name: each would continue the wrong records.
    from mlflow.tracking import MlflowClient

    from search.config.schema import load_config
    from search.run.tuner import _parent_run, resume_search
    from tests.stores import sqlite_store

    uri = sqlite_store(tmp_path / "other.db")
    client = MlflowClient(uri)
    other = client.create_run("0", tags={"hps.search": "wine", "hps.role": "search"}).info.run_id
    with pytest.raises(SearchNotFound, match=r"^search 'digits': run \w+ on .* is not its parent run \(it is tagged "
                                             r"hps.search='wine', hps.role='search'\)$"):
        _parent_run(client, other, "digits", uri)
    assert _parent_run(client, other, "wine", uri).info.run_id == other

    config = load_config("configs/digits.yaml").model_dump(mode="json", by_alias=True)
    storage = str(tmp_path / "runs")
    write_manifest(storage, "copy", {"config": config, "parent_run_id": other, "experiment_id": "0",
                                     "tracking_uri": uri})
    (tmp_path / "runs" / "copy" / "tuner.pkl").write_bytes(b"")
    with pytest.raises(SearchNotFound, match=r"^the folder of search 'copy' in .* holds the state of search 'digits-mlp'"):
        resume_search("copy", storage)
