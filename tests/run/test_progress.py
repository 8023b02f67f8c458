"""The terminal lines of a search: one per finished trial, one per retried attempt (Tune's tracebacks are off)."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field

from search.config.schema import parse_config
from search.run.progress import ProgressPrinter
from search.run.ray_setup import init_ray
from tests.conftest import load_yaml


@dataclass
class FakeTrial:
    """What the printer reads of a Tune trial."""

    trial_id: str
    last_result: dict = field(default_factory=dict)
    status: str = "RUNNING"
    num_failures: int = 0
    error: str | None = None  # what get_error() reads from the storage folder
    error_file: str | None = None  # Tune's error file in the trial's local folder

    def get_error(self):
        return self.error


def printer(**search) -> tuple[ProgressPrinter, io.StringIO]:
    raw = load_yaml("digits.yaml")
    raw["search"].update(num_samples=3, **search)
    out = io.StringIO()
    return ProgressPrinter(parse_config(raw), stream=out), out


def test_a_retried_attempt_is_one_line_with_its_reason_and_count():
    progress, out = printer(max_failures=2)
    trial = FakeTrial("abc123", {"epoch": 4}, num_failures=1, error=(
        "Traceback (most recent call last):\n  File \"x.py\", line 1\nray.exceptions.ActorDiedError: the actor died"))
    progress.on_trial_recover(0, [trial], trial)
    (line,) = out.getvalue().splitlines()
    assert line.endswith("trial abc123 failed at epoch 4, retrying from its last checkpoint (attempt 2 of 3): "
                         "ray.exceptions.ActorDiedError: the actor died"), line
    assert " done, " not in line  # a retry is not a finished trial


def test_the_reason_comes_from_the_local_error_file_before_the_storage_copy(tmp_path):
    """Tune writes the local error file at once; the copy get_error() reads follows with the next sync."""
    progress, out = printer()
    error_file = tmp_path / "error.txt"
    error_file.write_text("Failure # 1 (occurred at 2026-11-30)\nTraceback ...\nRuntimeError: first\n"
                          "Failure # 2 (occurred at 2026-11-30)\nTraceback ...\nRuntimeError: second\n")
    trial = FakeTrial("t2", {"epoch": 1}, num_failures=2, error=None, error_file=str(error_file))
    progress.on_trial_recover(0, [trial], trial)
    assert out.getvalue().rstrip().endswith("(attempt 3 of 3): RuntimeError: second")
    out.seek(0)
    out.truncate()
    progress.on_trial_recover(0, [trial], FakeTrial("t3"))  # nothing written anywhere
    assert out.getvalue().rstrip().endswith("): no error text")
    out.seek(0)
    out.truncate()
    # Resumed on another machine: the local file is gone, the storage copy is read.
    moved = FakeTrial("t4", error="ValueError: from storage", error_file=str(tmp_path / "gone.txt"))
    progress.on_trial_recover(0, [moved], moved)
    assert out.getvalue().rstrip().endswith("): ValueError: from storage")


def test_a_trial_that_fails_for_good_says_why_after_its_progress_line():
    progress, out = printer(max_failures=0)
    trial = FakeTrial("t1", {"epoch": 2, "best_val_loss": 0.5}, num_failures=1, error="ValueError: " + "x" * 500)
    progress.on_trial_error(0, [trial], trial)
    first, second = out.getvalue().splitlines()
    assert "[1/3 done, 0 running," in first and "trial t1 failed at epoch 2" in first
    assert "trial t1 failed for good after 1 attempt(s): ValueError: x" in second
    assert len(second.split("]", 1)[1]) < 300  # the reason is shortened, not the whole text


def test_finished_trials_are_counted_and_the_best_kept():
    progress, out = printer()
    good = FakeTrial("good", {"epoch": 4, "best_val_loss": 0.2, "finished": True})
    stopped = FakeTrial("stop", {"epoch": 1, "best_val_loss": 0.9})
    progress.on_trial_complete(0, [good, stopped], good)
    progress.on_trial_complete(0, [good, stopped], stopped)
    lines = out.getvalue().splitlines()
    assert "[1/3 done, 1 running," in lines[0]
    assert "trial good completed at epoch 4: val_loss=0.2 | best 0.2" in lines[0]
    assert "trial stop stopped early at epoch 1: val_loss=0.9 | best 0.2" in lines[1]


def test_tunes_own_trial_tracebacks_are_off_unless_asked_for(monkeypatch):
    for name in ("TUNE_PRINT_ALL_TRIAL_ERRORS", "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S",
                 "RAY_AIR_NEW_OUTPUT", "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"):
        monkeypatch.delenv(name, raising=False)  # what init_ray sets is taken back after the test
    monkeypatch.setattr("ray.is_initialized", lambda: True)  # stops before starting Ray: only the settings matter
    init_ray(None)
    assert os.environ["TUNE_PRINT_ALL_TRIAL_ERRORS"] == "0"
    monkeypatch.setenv("TUNE_PRINT_ALL_TRIAL_ERRORS", "1")  # a user who wants them
    init_ray(None)
    assert os.environ["TUNE_PRINT_ALL_TRIAL_ERRORS"] == "1"
