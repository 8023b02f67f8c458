"""Ordered, non-blocking MLflow writes from the driver that survive tracking-server outages.

The Tune callback only *submits* operations; a background thread executes them in order. When the server is
unreachable the thread keeps the failed operation at the head of the queue and retries it every second, so
training never waits for MLflow and nothing is dropped or reordered; when the server is back the backlog is
written. Operations name runs by a key (a trial id, or ``"parent"``) rather than a run id, because a run created
during an outage gets its id only when the server answers. What cannot be written before the search ends is
saved to a JSON file in the search's storage folder and replayed later (``hps resume``).

A write that fails while the server answers other requests (a rejected value, a deleted run, a model folder that
is gone, any exception at all) is retried at most ``MAX_ATTEMPTS`` times, then *given up*: it is taken off the
queue so later writes go on, logged as an error, and listed in :attr:`TrackingWriter.given_up`, which the search
reports (a tag on the parent run, a line at exit, exit code 1). Only "the server does not answer" is waited out.

Model uploads do not copy anything: the operation names the model folder of the trial's checkpoint, relative to
the search's experiment folder (local or ``s3://``), and the caller keeps that checkpoint until
:attr:`TrackingWriter.uploaded` says the upload succeeded. So a pending upload survives a restart of the machine
and a resume from a moved storage folder, and a folder that is gone makes the upload fail loudly instead of
"succeeding" with nothing (MLflow's ``log_artifacts`` walks a missing folder without an error).
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from search.records.inputs import log_datasets
from search.records.log_filters import drop_http_retry_warnings
from search.records.logged_models import folder_files, log_model_metrics, make_trial_model, upload_files
from search.records.storage import delete_state, is_remote, read_state, write_state

log = logging.getLogger(__name__)

# MLflow error codes that retrying cannot fix (bad value, run gone, ...): such an operation is given up at once.
PERMANENT_ERRORS = {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "INVALID_STATE", "BAD_REQUEST",
                    "RESOURCE_ALREADY_EXISTS", "PERMISSION_DENIED", "UNAUTHENTICATED"}
BACKOFF_S = (0.5, 1, 2, 5, 10)  # between the tries of a write that fails while the server answers
# While the server does not answer, the head write is tried again every second: a refused connection costs
# nothing, and the backlog starts draining within a second of the server's return (a backoff growing to 10 s left
# it idle for up to 10 s after each outage).
OUTAGE_POLL_S = 1.0
# Failures of one write, while the server answers, before it is given up (bounded whatever the exception type: an
# operation that can never succeed must not block every later write at the head of the queue).
MAX_ATTEMPTS = 5  # ~9 s of backoff in all: outlasts a locked database or a restarting worker
MAX_BATCH_METRICS, MAX_BATCH_TAGS = 1000, 100  # MLflow's limits for one log_batch
PARENT_TAG = "mlflow.parentRunId"  # MLflow's tag nesting a run under its parent
# How long a run's metrics may wait to be merged with its next epochs' into one log_batch. Each log_batch costs
# the tracking store ~10 ms of CPU (a query, inserts, a commit) whatever its size; short epochs would otherwise
# make MLflow compete with the trials for the CPU (a third of the driver's CPU time in a 24-trial digits search).
BATCH_WINDOW_S = 1.0


@dataclass
class Op:
    """One MLflow write: ``kind`` says which, ``key`` which run (resolved to a run id when executed)."""

    kind: str
    key: str
    args: dict[str, Any] = field(default_factory=dict)
    queued_at: float = 0.0  # time.monotonic() at submission: this process's clock, so not kept by save_pending
    # Executed before, here or by the process that saved it: it may have taken effect although no answer came (a
    # timeout or a 5xx after the server committed), so a create_run looks for its run before creating it again.
    tried: bool = False


class SourceMissing(RuntimeError):
    """The folder an upload names is gone: no retry can bring it back."""


def is_permanent(exc: Exception) -> bool:
    """True for errors the server gave a definite answer to; connection problems and 5xx are transient."""
    return isinstance(exc, SourceMissing) or (isinstance(exc, MlflowException) and exc.error_code in PERMANENT_ERRORS)


def describe_given_up(given_up: list[dict]) -> str:
    """``3 MLflow write(s) were given up (first: log_artifacts for 1a2b3c4d: ...)`` for a one-line report."""
    first = given_up[0]
    return (f"{len(given_up)} MLflow write(s) were given up (first: {first['kind']} for {first['key']}: "
            f"{first['reason'][:200]})")


class TrackingWriter:
    """Executes :class:`Op` s against one tracking server, in submission order, in a background thread.

    ``root`` is the search's experiment folder (a local path or a ``s3://``-style URI): relative upload sources
    are resolved against it when the upload runs.
    """

    def __init__(self, tracking_uri: str, root: str | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri)
        self.root = root
        self.runs: dict[str, str] = {}  # key → MLflow run id
        self.given_up: list[dict] = []  # {"kind", "key", "reason"} of every write given up, in order
        self.uploaded: set[str] = set()  # keys whose model upload (log_artifacts) succeeded
        self.outage_since: float | None = None
        self.outages: list[tuple[float, float]] = []  # (start, end) of every outage seen, for the record
        self._queue: collections.deque[Op] = collections.deque()
        self._cv = threading.Condition()
        self._busy = False
        self._closed = False
        self._draining = False  # someone waits for the queue to empty: no batching window
        self._thread = threading.Thread(target=self._work, name="hps-mlflow-writer", daemon=True)
        self._thread.start()

    # -- submitting -----------------------------------------------------------------------------------------
    def submit(self, kind: str, key: str, **args: Any) -> None:
        """Queue an operation; returns at once.

        ``log_artifacts`` takes ``local_dir`` (a folder: absolute, a URI, or relative to ``root``), optional
        ``artifact_path`` and optional ``tags`` that are set on the run only once the upload succeeded. The folder
        is read when the upload runs, not now: the caller must keep it until ``key`` is in :attr:`uploaded`.
        """
        with self._cv:
            self._queue.append(Op(kind, key, args, time.monotonic()))
            self._cv.notify_all()

    @property
    def dropped(self) -> int:
        """How many writes were given up."""
        return len(self.given_up)

    # -- draining ---------------------------------------------------------------------------------------------
    def drain(self, timeout: float) -> bool:
        """Wait until every submitted operation is written (True) or ``timeout`` seconds pass (False)."""
        deadline = time.monotonic() + timeout
        with self._cv:
            self._draining = True
            self._cv.notify_all()
            try:
                while self._queue or self._busy:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._cv.wait(min(remaining, 0.5))
            finally:
                self._draining = False
        return True

    def pending(self) -> list[Op]:
        with self._cv:
            return list(self._queue)

    def close(self, wait_s: float = 0) -> None:
        """Stop the worker; with ``wait_s``, wait that long for the write in flight to end (so that what is still
        queued afterwards is exactly what was not written)."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        if wait_s and self._thread is not threading.current_thread():
            self._thread.join(wait_s)

    def save_pending(self, target: str | Path) -> int:
        """Write what is still queued, the run ids known so far and the writes given up to ``target`` (a local
        path or a pyarrow-filesystem URI such as ``s3://...``), atomically; returns the count of queued writes."""
        self.close(wait_s=20)
        ops = self.pending()
        write_state(str(target), json.dumps({
            "tracking_uri": self.tracking_uri, "runs": self.runs, "given_up": self.given_up,
            "ops": [{**asdict(op), "queued_at": 0.0} for op in ops]}, indent=1))
        return len(ops)

    @classmethod
    def replay(cls, target: str | Path, tracking_uri: str | None = None, timeout: float = 60,
               root: str | None = None) -> "Replay":
        """Write operations saved by :meth:`save_pending` (relative upload sources resolved against ``root``),
        for as long as each ``timeout`` seconds see progress.

        Once every operation is written or given up the file is removed; otherwise what is left (and the run ids
        learnt meanwhile) is saved back to it. The result lists every write given up, earlier ones included.
        """
        saved = json.loads(read_state(str(target)))
        writer = cls(tracking_uri or saved["tracking_uri"], root)
        writer.runs.update(saved["runs"])
        writer.given_up.extend(saved.get("given_up", []))
        with writer._cv:
            # The process that saved them may have tried them already (see Op.tried).
            writer._queue.extend(Op(**{**op, "tried": True}) for op in saved["ops"])
            writer._cv.notify_all()
        left = len(writer.pending())
        done = writer.drain(timeout)
        while not done and writer.outage_since is None and len(writer.pending()) < left:
            left = len(writer.pending())  # slow (writes being tried and given up), but moving: keep going
            done = writer.drain(timeout)
        if done:
            writer.close()
            delete_state(str(target))
        else:
            writer.save_pending(target)
        return Replay(done, list(writer.given_up))

    # -- the worker ---------------------------------------------------------------------------------------------
    def _work(self) -> None:
        failures = 0  # failed tries of the head write while the server answers (bounded by MAX_ATTEMPTS)
        while True:
            with self._cv:
                while True:
                    while not self._queue and not self._closed:
                        self._cv.wait()
                    if self._closed:
                        return
                    wait_s = self._batch_window_left()
                    if wait_s <= 0:
                        break
                    self._cv.wait(wait_s)
                op = self._coalesce()
                self._busy = True
            try:
                self._execute(op)
            except Exception as exc:  # noqa: BLE001 - every failure is classified below
                if is_permanent(exc):
                    self._give_up(op, exc)
                elif not tracking_answers(self.client):
                    if self.outage_since is None:
                        self.outage_since = time.time()
                        log.warning("tracking server unavailable (%s); buffering writes until it is back",
                                    type(exc).__name__)
                    self._pause(OUTAGE_POLL_S)
                    continue
                else:  # the server answers, this write fails: its own problem, retried a bounded number of times
                    failures += 1
                    if failures < MAX_ATTEMPTS:
                        log.warning("writing %s for %s failed (attempt %d of %d): %s", op.kind, op.key, failures,
                                    MAX_ATTEMPTS, _one_line(exc))
                        self._pause(BACKOFF_S[min(failures - 1, len(BACKOFF_S) - 1)])
                        continue
                    self._give_up(op, exc)
            if self.outage_since is not None:
                self.outages.append((self.outage_since, time.time()))
                log.warning("tracking server is back; wrote the buffered operations")
                self.outage_since = None
            failures = 0
            with self._cv:
                self._queue.popleft()
                self._busy = False
                self._cv.notify_all()

    def _created_earlier(self, args: dict) -> str | None:
        """The run an earlier try of this create_run made (same trial, same parent), if the server has one."""
        tags = args["tags"]
        conditions = [f"tags.`{name}` = '{tags[name]}'" for name in ("hps.trial_id", PARENT_TAG) if name in tags]
        if not conditions:
            return None
        runs = self.client.search_runs([args["experiment_id"]], filter_string=" and ".join(conditions),
                                       max_results=1, order_by=["attributes.start_time ASC"])
        return runs[0].info.run_id if runs else None

    def _pause(self, seconds: float) -> None:
        """Wait before the next try (woken early by close)."""
        with self._cv:
            self._busy = False
            self._cv.wait(seconds)

    def _give_up(self, op: Op, exc: Exception) -> None:
        entry = {"kind": op.kind, "key": op.key, "reason": _one_line(exc)}
        with self._cv:
            self.given_up.append(entry)
        if op.kind == "log_artifacts":
            log.error("gave up uploading %s of %s (its checkpoint is kept in the storage folder): %s",
                      op.args.get("artifact_path") or "artifacts", op.key, entry["reason"])
        else:
            log.error("gave up writing %s for %s: %s", op.kind, op.key, entry["reason"])

    def _batch_window_left(self) -> float:
        """Seconds the head ``log_batch`` should still wait for more of its run's epochs (0: write it now)."""
        head = self._queue[0]
        if head.kind != "log_batch" or self._draining or self.outage_since is not None:
            return 0.0
        return head.queued_at + BATCH_WINDOW_S - time.monotonic()

    def _coalesce(self) -> Op:
        """Merge the head ``log_batch`` with later ones for the same run (one request instead of one per epoch,
        so the writer keeps up with many trials). Only ops of other runs are passed over: per run, order holds.
        Called with the lock held; the merged op replaces the head."""
        head = self._queue[0]
        if head.kind != "log_batch":
            return head
        metrics, tags, absorbed = list(head.args.get("metrics", [])), dict(head.args.get("tags", {})), []
        for index in range(1, len(self._queue)):
            op = self._queue[index]
            if op.key != head.key:
                continue
            if op.kind != "log_batch" or len(metrics) + len(op.args.get("metrics", [])) > MAX_BATCH_METRICS \
                    or len(tags | op.args.get("tags", {})) > MAX_BATCH_TAGS:
                break
            metrics += op.args.get("metrics", [])
            tags.update(op.args.get("tags", {}))
            absorbed.append(index)
        if not absorbed:
            return head
        for index in reversed(absorbed):
            del self._queue[index]
        self._queue[0] = Op("log_batch", head.key, {"metrics": metrics, "tags": tags}, head.queued_at)
        return self._queue[0]

    def _execute(self, op: Op) -> None:
        client, args = self.client, op.args
        if op.kind == "create_run":
            if op.key not in self.runs:
                # create_run is not idempotent: retried blindly, a request the server had committed left a second
                # run of the same trial, RUNNING for ever.
                earlier = self._created_earlier(args) if op.tried else None
                op.tried = True
                self.runs[op.key] = earlier or client.create_run(args["experiment_id"], tags=args["tags"],
                                                                 run_name=args["run_name"]).info.run_id
            return
        run_id = self.runs.get(op.key)
        if run_id is None:
            raise MlflowException(f"no run for {op.key}", error_code="RESOURCE_DOES_NOT_EXIST")
        if op.kind == "log_params":
            log_params(client, run_id, args["params"])
        elif op.kind == "log_batch":
            metrics = [Metric(k, v, ts, step) for k, v, ts, step in args.get("metrics", [])]
            tags = [RunTag(k, str(v)) for k, v in args.get("tags", {}).items()]
            client.log_batch(run_id, metrics=metrics, tags=tags)
        elif op.kind == "log_artifacts":
            tags = args.get("tags") or {}  # e.g. hps.model: only once the files are really there
            logged_model = args.get("logged_model")
            if logged_model:  # a LoggedModel an earlier try may have made is looked up, not made twice; the tags
                logged_model = {**logged_model, "look_first": op.tried or logged_model.get("look_first", False),
                                "run_tags": tags}  # go with its metrics
            op.tried = True
            model_id = log_folder(client, run_id, args["local_dir"], args.get("artifact_path"), self.root, logged_model)
            if tags and not model_id:
                client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
            self.uploaded.add(op.key)
        elif op.kind == "log_inputs":
            log_datasets(client, run_id, args["datasets"])
        elif op.kind == "log_text":
            client.log_text(run_id, args["text"], args["path"])
        elif op.kind == "set_status":
            if args["status"] == "RUNNING":
                client.update_run(run_id, status="RUNNING")
            else:
                client.set_terminated(run_id, args["status"])
        else:
            raise ValueError(f"unknown operation {op.kind}")


@dataclass
class Replay:
    """What :meth:`TrackingWriter.replay` did: whether everything was written or given up, and what was given up."""

    done: bool
    given_up: list[dict]


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:500]


def log_folder(client: MlflowClient, run_id: str, source: str, artifact_path: str | None = None,
               root: str | None = None, logged_model: dict | None = None) -> str | None:
    """Upload the files of folder ``source`` (a local path, a URI, or a path relative to ``root``) to the run's
    artifacts and, with ``logged_model`` (the keyword arguments of :func:`search.records.logged_models.log_trial_model`
    but the folder and run), as that run's LoggedModel, whose id it returns: the run's copy uploads while the
    LoggedModel is made; the model's metrics and the ``run_tags`` are written once both are there. Raises
    :class:`SourceMissing` when the folder does not exist or holds no file."""
    with _local_folder(source, root) as local_dir:
        def run_copy() -> None:
            upload_files(lambda path, where: client.log_artifact(run_id, path, where),
                         folder_files(local_dir, artifact_path))

        if not logged_model:
            run_copy()
            return None
        options = dict(logged_model)
        metrics, datasets, run_tags = options.pop("metrics"), options.pop("datasets", None), options.pop("run_tags", {})
        with ThreadPoolExecutor(max_workers=1) as pool:
            copied = pool.submit(run_copy)
            model_id = make_trial_model(client, run_id=run_id, model_folder=local_dir, **options)
            copied.result()
    log_model_metrics(client, run_id, model_id, metrics, options.get("step", 0), datasets, run_tags)
    return model_id


@contextlib.contextmanager
def _local_folder(source: str, root: str | None):
    """The folder ``source`` as a local folder (downloaded first from a remote storage); raises
    :class:`SourceMissing` when it does not exist or holds no file."""
    location = source
    if root and not is_remote(source) and not os.path.isabs(source):
        location = f"{root.rstrip('/')}/{source}"
    if not is_remote(location):
        folder = Path(location)
        if not folder.is_dir() or not any(p.is_file() for p in folder.rglob("*")):
            raise SourceMissing(f"{location} is missing or empty")
        yield location
        return
    import pyarrow.fs

    filesystem, path = pyarrow.fs.FileSystem.from_uri(location)
    if filesystem.get_file_info(path).type != pyarrow.fs.FileType.Directory:
        raise SourceMissing(f"{location} is missing")
    with tempfile.TemporaryDirectory(prefix="hps-upload-") as tmp:
        pyarrow.fs.copy_files(path, tmp, source_filesystem=filesystem,
                              destination_filesystem=pyarrow.fs.LocalFileSystem())
        if not any(p.is_file() for p in Path(tmp).rglob("*")):
            raise SourceMissing(f"{location} is empty")
        yield tmp


def log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    """Log params (values as text, cut to MLflow's 6000 characters) in batches of MLflow's 100 per request."""
    items = [Param(k, str(v)[:6000]) for k, v in params.items()]
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=items[start : start + 100])


def tracking_answers(client: MlflowClient) -> bool:
    """Whether the tracking server answers a cheap request: tells an outage (wait it out) from an operation that
    fails on its own."""
    try:
        client.search_experiments(max_results=1)
    except MlflowException as exc:
        return is_permanent(exc)  # a definite refusal (e.g. permission) is an answer
    except Exception:  # noqa: BLE001 - connection refused, timeout, ...
        return False
    return True


def quick_failing_http() -> None:
    """Make MLflow's HTTP client give up quickly: :class:`TrackingWriter` does the retrying (MLflow's own default
    retries a request for minutes, which would stall the driver)."""
    drop_http_retry_warnings()  # the writer says "unavailable" and "back" instead, once each
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
