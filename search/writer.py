"""Ordered, non-blocking MLflow writes from the driver that survive tracking-server outages.

The Tune callback only *submits* operations; a background thread executes them in order. When the server is
unreachable the thread keeps the failed operation at the head of the queue and retries it with backoff, so
training never waits for MLflow and nothing is dropped or reordered; when the server is back the backlog is
written. Operations name runs by a key (a trial id, or ``"parent"``) rather than a run id, because a run created
during an outage gets its id only when the server answers. What cannot be written before the search ends is
saved to a JSON file and replayed later (``hps resume``).
"""

from __future__ import annotations

import collections
import json
import logging
import os
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

# MLflow error codes that retrying cannot fix (bad value, run gone, ...): such an operation is dropped and counted.
PERMANENT_ERRORS = {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "INVALID_STATE", "BAD_REQUEST",
                    "RESOURCE_ALREADY_EXISTS", "PERMISSION_DENIED", "UNAUTHENTICATED"}
BACKOFF_S = (0.5, 1, 2, 5, 10)
MAX_BATCH_METRICS, MAX_BATCH_TAGS = 1000, 100  # MLflow's limits for one log_batch
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


def is_permanent(exc: Exception) -> bool:
    """True for errors the server gave a definite answer to; connection problems and 5xx are transient."""
    return isinstance(exc, MlflowException) and exc.error_code in PERMANENT_ERRORS


class TrackingWriter:
    """Executes :class:`Op` s against one tracking server, in submission order, in a background thread."""

    def __init__(self, tracking_uri: str, staging_dir: str | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri)
        self.staging_dir = Path(staging_dir) if staging_dir else None
        self.runs: dict[str, str] = {}  # key → MLflow run id
        self.dropped = 0
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
        """Queue an operation; returns at once."""
        if kind == "log_artifacts":
            args["local_dir"] = self._stage(args["local_dir"], key)
        with self._cv:
            self._queue.append(Op(kind, key, args, time.monotonic()))
            self._cv.notify_all()

    def _stage(self, local_dir: str, key: str) -> str:
        # The source (a trial checkpoint) may be rotated away before an outage ends: upload from a private copy.
        if self.staging_dir is None:
            return local_dir
        target = self.staging_dir / f"{key}-{time.monotonic_ns()}"
        shutil.copytree(local_dir, target)
        return str(target)

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

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    def save_pending(self, path: Path) -> int:
        """Write what is still queued (and the run ids known so far) to ``path``; returns the count."""
        self.close()
        ops = self.pending()
        path.write_text(json.dumps({"tracking_uri": self.tracking_uri, "runs": self.runs,
                                    "ops": [{**asdict(op), "queued_at": 0.0} for op in ops]}, indent=1))
        return len(ops)

    @classmethod
    def replay(cls, path: Path, tracking_uri: str | None = None, timeout: float = 60) -> bool:
        """Write operations saved by :meth:`save_pending`; the file is removed once all are written."""
        saved = json.loads(path.read_text())
        writer = cls(tracking_uri or saved["tracking_uri"])
        writer.runs.update(saved["runs"])
        with writer._cv:
            writer._queue.extend(Op(**op) for op in saved["ops"])
            writer._cv.notify_all()
        done = writer.drain(timeout)
        writer.close()
        if done:
            path.unlink()
        return done

    # -- the worker ---------------------------------------------------------------------------------------------
    def _work(self) -> None:
        attempt = 0
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
                    log.warning("MLflow rejected %s for %s, skipped: %s", op.kind, op.key, exc)
                    self.dropped += 1
                else:
                    if self.outage_since is None:
                        self.outage_since = time.time()
                        log.warning("tracking server unavailable (%s); buffering writes until it is back",
                                    type(exc).__name__)
                    with self._cv:
                        self._busy = False
                        self._cv.wait(BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)])
                    attempt += 1
                    continue
            if self.outage_since is not None:
                self.outages.append((self.outage_since, time.time()))
                log.warning("tracking server is back; wrote the buffered operations")
                self.outage_since = None
            attempt = 0
            with self._cv:
                self._queue.popleft()
                self._busy = False
                self._cv.notify_all()

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
                run = client.create_run(args["experiment_id"], tags=args["tags"], run_name=args["run_name"])
                self.runs[op.key] = run.info.run_id
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
            client.log_artifacts(run_id, args["local_dir"], artifact_path=args.get("artifact_path"))
            if self.staging_dir is not None and Path(args["local_dir"]).is_relative_to(self.staging_dir):
                shutil.rmtree(args["local_dir"], ignore_errors=True)
        elif op.kind == "log_text":
            client.log_text(run_id, args["text"], args["path"])
        elif op.kind == "set_status":
            if args["status"] == "RUNNING":
                client.update_run(run_id, status="RUNNING")
            else:
                client.set_terminated(run_id, args["status"])
        else:
            raise ValueError(f"unknown operation {op.kind}")


def log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    """Log params (values as text, cut to MLflow's 6000 characters) in batches of MLflow's 100 per request."""
    items = [Param(k, str(v)[:6000]) for k, v in params.items()]
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=items[start : start + 100])


def quick_failing_http() -> None:
    """Make MLflow's HTTP client give up quickly: :class:`TrackingWriter` does the retrying (MLflow's own default
    retries a request for minutes, which would stall the driver)."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
