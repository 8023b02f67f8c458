"""Where a search's state lives: the storage folder (local or ``s3://``) with Ray's experiment state, the trials'
checkpoints and results, the manifest `hps resume` reads, and the MLflow writes waiting for the tracking server.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path

from search.errors import SearchExists, SearchNotFound, StorageError

DEFAULT_STORAGE = "hps-runs"
MANIFEST = "hps-search.json"


def is_remote(location: str) -> bool:
    """Whether ``location`` is a URI (``s3://...`` or another pyarrow filesystem) rather than a local path."""
    return "://" in location


def _filesystem(target: str):
    """(pyarrow filesystem, path) for a URI; None for a local path."""
    if not is_remote(target):
        return None
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(target)


def write_state(target: str, text: str) -> None:
    """Write a small state file (the pending writes, the search manifest) so that it is never seen half-written:
    into a temporary file beside it, then renamed over it. ``target`` is a local path or a pyarrow URI
    (``s3://...``: the renamed copy appears whole, as one object)."""
    remote = _filesystem(target)
    if remote is None:
        folder = Path(target).parent
        folder.mkdir(parents=True, exist_ok=True)
        fd, partial = tempfile.mkstemp(prefix=f".{Path(target).name}.", suffix=".partial", dir=folder)
        try:
            with os.fdopen(fd, "w") as stream:
                stream.write(text)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(partial, target)
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
        return
    filesystem, path = remote
    filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
    partial = f"{path}.{uuid.uuid4().hex}.partial"
    try:
        with filesystem.open_output_stream(partial) as stream:
            stream.write(text.encode())
        filesystem.move(partial, path)
    finally:
        import pyarrow.fs

        if filesystem.get_file_info(partial).type != pyarrow.fs.FileType.NotFound:
            filesystem.delete_file(partial)


def read_state(target: str) -> str:
    """The text of a state file written by :func:`write_state`."""
    remote = _filesystem(target)
    if remote is None:
        return Path(target).read_text()
    filesystem, path = remote
    with filesystem.open_input_stream(path) as stream:
        return stream.readall().decode()


def state_exists(target: str) -> bool:
    """Whether a state file exists at ``target`` (a local path or a pyarrow URI)."""
    remote = _filesystem(target)
    if remote is None:
        return Path(target).is_file()
    import pyarrow.fs

    filesystem, path = remote
    return filesystem.get_file_info(path).type == pyarrow.fs.FileType.File


def delete_state(target: str) -> None:
    """Remove a state file (no error if it is already gone)."""
    remote = _filesystem(target)
    if remote is None:
        Path(target).unlink(missing_ok=True)
        return
    import pyarrow.fs

    filesystem, path = remote
    if filesystem.get_file_info(path).type != pyarrow.fs.FileType.NotFound:
        filesystem.delete_file(path)


def storage_dir(storage: str | None) -> str:
    """Absolute storage folder for Ray's experiment state and checkpoints."""
    if storage and is_remote(storage):
        return storage  # s3:// or other pyarrow filesystems are passed through to Ray
    return str(Path(storage or DEFAULT_STORAGE).expanduser().resolve())


def storage_flag(storage_path: str) -> str:
    """The ``--storage`` option `hps resume` needs for this storage folder (none for the default one)."""
    return "" if storage_path == storage_dir(None) else f" --storage {storage_path}"


def experiment_path(storage_path: str, name: str) -> str:
    """The folder (or URI) of search ``name``'s experiment state in ``storage_path``."""
    return f"{storage_path.rstrip('/')}/{name}"


def pending_file(storage_path: str, name: str) -> str:
    """Where MLflow writes still pending at the end of a search wait for `hps resume`: beside the experiment state,
    in the search's storage folder (with ``s3://`` storage, in the bucket), never in the working folder."""
    return f"{experiment_path(storage_path, name)}/mlflow-pending.json"


def write_manifest(storage_path: str, name: str, manifest: dict) -> None:
    """What `hps resume` needs besides Ray's own state: the resolved config and the MLflow run ids. Written
    whole or not at all (temporary file, then rename)."""
    write_state(f"{experiment_path(storage_path, name)}/{MANIFEST}", json.dumps(manifest, indent=1))


def read_manifest(storage_path: str, name: str) -> dict:
    """The manifest of search ``name``; raises :class:`SearchNotFound` without one or without a state to resume."""
    import pyarrow.fs
    from ray import tune

    path = experiment_path(storage_path, name)
    filesystem, root = pyarrow.fs.FileSystem.from_uri(path)
    if filesystem.get_file_info(f"{root}/{MANIFEST}").type == pyarrow.fs.FileType.NotFound:
        raise SearchNotFound(f"no search named {name!r} in {storage_path} (looked for {path}/{MANIFEST})")
    if not tune.Tuner.can_restore(path):
        raise SearchNotFound(f"search {name!r} in {storage_path} has no experiment state to resume from")
    with filesystem.open_input_stream(f"{root}/{MANIFEST}") as stream:
        return json.loads(stream.readall())


def claim_storage(storage_path: str, name: str, overwrite: bool) -> None:
    """Make sure search ``name`` can write its state into ``storage_path``: refuse (or, with ``overwrite``, empty)
    the folder of an earlier search of that name, and fail now on storage that cannot be written."""
    if is_remote(storage_path):
        _claim_remote_storage(storage_path, name, overwrite)
        return
    folder = Path(storage_path) / name
    if folder.exists():
        if not overwrite:
            raise SearchExists(f"a search named {name!r} already exists in {folder}; continue it with "
                               f"`hps resume {name} --storage {storage_path}` or start over with --overwrite")
        shutil.rmtree(folder)
    try:  # now, so that a storage path that is a file or read-only fails before any run is created
        folder.mkdir(parents=True)
    except OSError as exc:
        raise StorageError(f"storage {storage_path} cannot be used: {exc.strerror or exc}") from None


def _claim_remote_storage(uri: str, name: str, overwrite: bool) -> None:
    """The same check for ``s3://`` (or another pyarrow filesystem Ray accepts): a second search of the same name
    would otherwise write into the first one's experiment state. S3 settings come from the environment
    (``AWS_ENDPOINT_URL`` for MinIO, ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``), as they do for Ray."""
    import pyarrow.fs

    try:
        filesystem, root = pyarrow.fs.FileSystem.from_uri(uri.rstrip("/"))
        path = f"{root.rstrip('/')}/{name}"
        missing = filesystem.get_file_info(path).type == pyarrow.fs.FileType.NotFound
    except (OSError, ValueError) as exc:  # unreachable endpoint, bad credentials, unknown scheme
        raise StorageError(f"storage {uri} cannot be used: {str(exc).splitlines()[0]}") from None
    if missing:
        return
    if not overwrite:
        raise SearchExists(f"a search named {name!r} already exists in {uri.rstrip('/')}/{name}; "
                           "pass --overwrite to start over")
    filesystem.delete_dir(path)


def trial_error_text(trial) -> str:
    """The text of a Tune trial's errors so far (each failed attempt's exception), or "" when there is none.

    Tune writes its error file in the trial's local folder at once and copies it to the storage folder (what
    ``Trial.get_error`` reads) with the next sync, so the local file comes first: during a retry the storage copy
    may not exist yet. After a resume on another machine only the storage copy is there."""
    path = getattr(trial, "error_file", None)
    try:
        if path and Path(path).exists():
            return Path(path).read_text().strip()
    except OSError:
        pass
    return str(trial.get_error() or "").strip()


def read_results(trial_dir: str | None, filesystem=None) -> list[dict]:
    """Every result a trial reported, from the ``result.json`` Tune's JSON logger keeps in its folder.

    ``trial_dir`` is a local path or a URI, or a path on ``filesystem`` (a pyarrow filesystem): Tune's
    ``Trial.path`` is a path on the trial's storage filesystem, without the ``s3://`` of the storage it is in.
    (Tune's ``Result.metrics_dataframe`` holds the same rows flattened into columns; a report that carries several
    short epochs nests them, so the lines are read as they were written.)
    """
    import pyarrow.fs

    if not trial_dir:
        return []
    try:
        if filesystem is not None:
            path = trial_dir
        else:
            filesystem, path = _filesystem(trial_dir) or (pyarrow.fs.LocalFileSystem(), trial_dir)
        with filesystem.open_input_stream(f"{path}/result.json") as stream:
            text = stream.readall().decode()
    except (OSError, FileNotFoundError):
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def ended_in_saved_state(trial_dir: str) -> set[str]:
    """Trial ids the experiment state on disk (what a resume would start from) records as ended.

    Read from the newest ``experiment_state-*.json`` beside the trial's folder: Tune has no public reader for the
    state it is writing while the experiment runs.
    """
    if is_remote(trial_dir):
        return set()
    states = sorted(Path(trial_dir).parent.glob("experiment_state-*.json"), key=lambda f: f.stat().st_mtime)
    if not states:
        return set()
    try:
        stat = states[-1].stat()
        version = (str(states[-1]), stat.st_ino, stat.st_mtime_ns, stat.st_size)
        # Parsed again only when Tune has written it again: the driver asks at every step of the search, and the
        # file grows with every trial (parsing it each time took most of the driver's time in a 16-trials-at-once
        # search, measured with py-spy).
        if _SAVED_STATE.get("version") != version:
            trial_data = json.loads(states[-1].read_text())["trial_data"]
            _SAVED_STATE.update(version=version, ended=_ended_trials(trial_data))
    except (OSError, ValueError, KeyError):  # being rewritten right now: try again at the next step
        return set()
    return set(_SAVED_STATE["ended"])


_SAVED_STATE: dict = {}  # the newest experiment state read, by (path, inode, mtime, size), and the trials it ended


def _ended_trials(trial_data: list) -> set[str]:
    ended = set()
    for entry in trial_data:
        trial = json.loads(entry[0]) if isinstance(entry[0], str) else entry[0]
        if trial.get("status") in ("TERMINATED", "ERROR"):
            ended.add(trial.get("trial_id"))
    return ended


def prune_checkpoints(trial_dir: str | None, keep_newest: bool = False) -> int:
    """Delete a trial's checkpoint folders (local storage only), or all but the newest; returns how many."""
    if not trial_dir or is_remote(trial_dir) or not Path(trial_dir).is_dir():
        return 0
    removed = 0
    folders = sorted(Path(trial_dir).glob("checkpoint_*"))
    for folder in folders[:-1] if keep_newest else folders:
        shutil.rmtree(folder, ignore_errors=True)
        removed += 1
    return removed


def is_trial_folder(path: str | None, trial_id: str) -> bool:
    """Whether ``path`` (a :attr:`tune.Result.path`) is the folder of trial ``trial_id``: Tune names a trial's
    folder after its id."""
    return trial_id in os.path.basename(path or "")


def checkpoint_of(results, trial_id: str):
    """The newest checkpoint of trial ``trial_id`` in a ``tune.ResultGrid`` (None without one)."""
    for result in results:
        if result.path and is_trial_folder(result.path, trial_id):
            return result.checkpoint
    return None


def experiment_trials(results) -> list:
    """The trials of a ``tune.ResultGrid``, with their status and last result.

    Tune exposes them only through the grid's private ``_experiment_analysis`` (a ``Result`` has neither the trial
    id nor the status, and an ``ExperimentAnalysis`` read back from disk sees the trials Ctrl-C stopped as RUNNING):
    this is the one place that reads it.
    """
    return results._experiment_analysis.trials  # noqa: SLF001
