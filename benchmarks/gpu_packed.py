#!/usr/bin/env python3
"""Packed trials on a GPU (issue 16, figure 4): member-epochs/s of compatible trials trained (a) one after another,
(b) by K concurrent processes sharing the GPU (Ray's ``gpus_per_trial: 1/K``), (c) as one ``Pack`` of M members,
with the GPU's utilisation and peak memory during each. Plain PyTorch: no Ray, no MLflow, no Optuna.

Run it from the repository root (the GPU machine has only torch, numpy, pandas, scikit-learn, matplotlib)::

    OUT=$OUT PYTHONPATH=. python benchmarks/gpu_packed.py     # or: python -m benchmarks.gpu_packed

Cases, for each dataset (digits, 1257 training rows; a synthetic table of 50k rows x 64 features, 10 classes, to see
where the GPU saturates) and each norm (batch, none), on benchmarks/packed.py's packable configurations:

  sequential    one trial after another, ``train_trial`` on cuda (each trial's setup included);
  concurrent    K spawned processes, each training trials alone with ``gpu_share=1/K``, started together;
  packed        one Pack of M members for M in (8, 32, 64, 128), AMP off and on (bf16); M stops growing when the
                budget or the GPU memory runs out.

Every case trains whole epochs until it has trained ``EPOCHS`` per trial or used its time box, and is reported as
member-epochs/s (every epoch of every trial counts once; setup is included) and as trials/hour of
``TRIAL_EPOCHS``-epoch trials. GPU utilisation (mean %) and memory (peak MiB) come from ``nvidia-smi -lms 200``
sampled during the case, else from ``torch.cuda.utilization()``, else "n/a". Ratios: packed vs sequential and packed
vs concurrent (the issue's target: >= 10x packed vs unpacked on a GPU).

Without CUDA every CUDA part prints ``SKIP (no CUDA device) [...]`` and a CPU smoke runs instead (digits, M in
(2, 4), 1 epoch; concurrent with 2 processes), exit 0. Environment: PACKED_BUDGET_S (default 540 s; a watchdog
writes what was measured and stops at budget + 30 s), PACKED_QUICK=1 (a seconds-long smoke: CPU-sized cases even on
a GPU), OUT (gpu_packed.json and gpu_packed.md go there; printed otherwise). Exit 1 when a case failed.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import threading
import time
import traceback

T0 = time.monotonic()
BUDGET_S = float(os.environ.get("PACKED_BUDGET_S", "540"))
HARD_LIMIT_S = BUDGET_S + 30
QUICK = os.environ.get("PACKED_QUICK", "0") not in ("", "0", "false", "no")

# Run as a script, sys.path[0] is benchmarks/ itself: drop it, and make the checkout importable without PYTHONPATH.
_HERE = os.path.dirname(os.path.abspath(__file__))
if sys.path and os.path.abspath(sys.path[0] or os.getcwd()) == _HERE:
    sys.path.pop(0)
if os.path.dirname(_HERE) not in sys.path:
    sys.path.insert(0, os.path.dirname(_HERE))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from benchmarks import deadline  # noqa: E402 - standard library only
from benchmarks.packed import configurations  # noqa: E402 - imports trainables only
from trainables.packed import Pack, pack_key  # noqa: E402
from trainables.preprocessing import Preprocessor  # noqa: E402
from trainables.splitting import TrialData, split_dataset  # noqa: E402
from trainables.train import TrainSettings, trial_epochs  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
NO_CUDA = "SKIP (no CUDA device)"
SMOKE = QUICK or not HAS_CUDA  # CPU-sized cases
DEVICE = "cuda:0" if HAS_CUDA else "cpu"
MEMBERS = (2, 4) if SMOKE else (8, 32, 64, 128)
# Concurrent processes (gpus_per_trial 1/PROCESSES); PACKED_PROCESSES=0 leaves that way out.
PROCESSES = int(os.environ.get("PACKED_PROCESSES", "2" if SMOKE else "4"))
TRIAL_EPOCHS = 40  # configs/digits.yaml's max_epochs: what one "trial" of the trials/hour figure trains
# Epochs each trial of a case trains (per dataset): digits epochs are 20 steps, the synthetic table's ~600.
EPOCHS = {"digits": 1, "synthetic": 1} if SMOKE else {"digits": 10, "synthetic": 3}
NORMS = ("batch", "none")
SYNTHETIC_ROWS = 50_000
MIN_CASE_S = 0.0 if SMOKE else 3.0  # a case shorter than this is repeated: nvidia-smi samples every 200 ms
RESULT: dict = {"cuda": HAS_CUDA, "quick": QUICK, "smoke": SMOKE, "budget_s": BUDGET_S, "device": DEVICE,
                "members": list(MEMBERS), "processes": PROCESSES, "trial_epochs": TRIAL_EPOCHS, "epochs": EPOCHS,
                "datasets": {}, "cases": [], "ratios": [], "skipped": [], "failures": []}


LIVE: list = []  # the concurrent processes and nvidia-smi samplers running now: the watchdog stops them


def remaining() -> float:
    return BUDGET_S - (time.monotonic() - T0)


def skip(msg: str) -> None:
    print(f"SKIP: {msg}" if not msg.startswith("SKIP") else msg, flush=True)
    RESULT["skipped"].append(msg)


def sync() -> None:
    if HAS_CUDA:
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------------ data


def digits() -> TrialData:
    return split_dataset("sklearn:digits", "auto", 0.15, 0.15, 0).trial_data()  # configs/digits.yaml's split


def synthetic(rows: int, features: int = 64, classes: int = 10, seed: int = 0) -> TrialData:
    """A table where the GPU has work to do: Gaussian features, the class a noisy argmax of a random projection."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, features)).astype(np.float32)
    y = (x @ rng.standard_normal((features, classes)) + rng.standard_normal((rows, classes))).argmax(axis=1)
    frame, target = pd.DataFrame(x, columns=[f"f{i}" for i in range(features)]), pd.Series(y, name="y")
    cut = int(0.8 * rows)
    prep = Preprocessor.fit(frame.iloc[:cut], target.iloc[:cut], "multiclass")
    return TrialData(prep.transform_features(frame.iloc[:cut]), prep.transform_target(target.iloc[:cut]),
                     prep.transform_features(frame.iloc[cut:]), prep.transform_target(target.iloc[cut:]),
                     prep.to_dict())


# ------------------------------------------------------------------------------------------------ GPU sampling


class GpuSampler:
    """GPU utilisation and memory while a case runs: ``nvidia-smi -lms 200`` in a background process, else
    ``torch.cuda.utilization()`` polled from a thread, else nothing ("n/a")."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float | None]] = []  # (utilisation %, memory used MiB or None)
        self.source, self.proc, self.thread, self.stop = "n/a", None, None, threading.Event()

    def __enter__(self) -> GpuSampler:
        LIVE.append(self)
        if not HAS_CUDA:
            return self
        if shutil.which("nvidia-smi"):
            index = (os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0].strip() or "0"
            self.proc = subprocess.Popen(
                ["nvidia-smi", f"--id={index}", "--query-gpu=utilization.gpu,memory.used",
                 "--format=csv,noheader,nounits", "-lms", "200"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            self.source, self.thread = "nvidia-smi", threading.Thread(target=self._read_smi, daemon=True)
        elif self._torch_utilization() is not None:
            self.source, self.thread = "torch.cuda.utilization", threading.Thread(target=self._poll, daemon=True)
        if self.thread:
            self.thread.start()
        return self

    def _read_smi(self) -> None:
        for line in self.proc.stdout:
            try:
                util, mem = (float(v) for v in line.strip().split(",")[:2])
            except ValueError:
                continue
            self.samples.append((util, mem))

    @staticmethod
    def _torch_utilization() -> float | None:
        try:
            return float(torch.cuda.utilization())
        except Exception:  # noqa: BLE001 - needs pynvml / amdsmi
            return None

    def _poll(self) -> None:
        while not self.stop.wait(0.2):
            util = self._torch_utilization()
            if util is not None:
                self.samples.append((util, None))

    def __exit__(self, *exc) -> None:
        if self in LIVE:
            LIVE.remove(self)
        self.stop.set()
        if self.proc:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self.thread:
            self.thread.join(timeout=5)

    def summary(self) -> dict:
        utils = [u for u, _ in self.samples]
        mems = [m for _, m in self.samples if m is not None]
        return {"gpu_util_source": self.source, "gpu_util_samples": len(utils),
                "gpu_util_mean_pct": round(float(np.mean(utils)), 1) if utils else "n/a",
                "gpu_memory_peak_mib": round(max(mems)) if mems else "n/a"}


# ------------------------------------------------------------------------------------------------ the three ways


def settings(epochs: int, amp: bool = False, gpu_share: float = 1.0) -> TrainSettings:
    return TrainSettings(max_epochs=epochs, device=DEVICE, amp=amp, gpu_share=gpu_share)


def run_alone(configs: list[dict], data: TrialData, epochs: int, deadline: float, gpu_share: float = 1.0) -> int:
    """Trials one after another until ``deadline`` (monotonic clock), each for ``epochs``; member-epochs trained.
    Stops at an epoch boundary, so the epochs counted are whole ones."""
    done = 0
    for params in configs:
        trial = trial_epochs(params, data, settings(epochs, gpu_share=gpu_share))
        for _ in trial:
            done += 1
            if time.monotonic() >= deadline:
                trial.close()
                return done
    return done


def run_pack(configs: list[dict], data: TrialData, epochs: int, deadline: float, amp: bool) -> int:
    """One Pack of all ``configs`` for ``epochs`` (or until ``deadline``); member-epochs trained."""
    pack = Pack(DEVICE, amp=amp)
    for index, params in enumerate(configs):
        pack.add(index, params, data, settings(epochs, amp))
    done = 0
    while len(pack):
        done += len(pack.step())
        if time.monotonic() >= deadline:
            break
    return done


def _worker(rank: int, tasks, results, barrier) -> None:
    """A concurrent process: for each task, warm up, wait for the others, train trials alone until the deadline."""
    torch.set_num_threads(1)
    if HAS_CUDA:
        torch.zeros(1, device=DEVICE)  # the CUDA context, before the parent measures anything
    barrier.wait()
    while True:
        task = tasks.get()
        if task is None:
            return
        configs, data, epochs, box_s, gpu_share = task
        try:
            run_alone(configs[:1], data, 1, 0.0, gpu_share)  # warm-up: CUDA context, kernels, data placement
            sync()
            error = None
        except Exception as exc:  # noqa: BLE001
            error = f"{type(exc).__name__}: {exc}"[:300]
        barrier.wait()
        start, done = time.monotonic(), 0
        if error is None:
            try:
                done = run_alone(configs, data, epochs, start + box_s, gpu_share)
                sync()
            except Exception as exc:  # noqa: BLE001
                error = f"{type(exc).__name__}: {exc}"[:300]
        results.put((rank, done, start, time.monotonic(), error))


class Workers:
    """PROCESSES spawned processes, started once (importing torch and starting CUDA takes seconds) and reused."""

    def __init__(self, count: int) -> None:
        context = mp.get_context("spawn")
        self.count, self.results, self.barrier = count, context.Queue(), context.Barrier(count + 1)
        self.queues = [context.Queue() for _ in range(count)]
        self.procs = [context.Process(target=_worker, args=(i, q, self.results, self.barrier), daemon=True)
                      for i, q in enumerate(self.queues)]
        LIVE.append(self)
        for proc in self.procs:
            proc.start()
        # Every process has imported torch (and started CUDA) before anything is measured: no case competes with that.
        self.barrier.wait(timeout=300)

    def run(self, configs: list[dict], data: TrialData, epochs: int, box_s: float) -> tuple[int, float, list]:
        """Each process trains its own slice of ``configs``; returns member-epochs, wall seconds from the common
        start to the last process's end, and any errors."""
        for rank, queue in enumerate(self.queues):
            queue.put((configs[rank :: self.count], data, epochs, box_s, 1.0 / self.count))
        self.barrier.wait(timeout=max(60.0, box_s))
        start = time.monotonic()
        got = [self.results.get(timeout=box_s + 120) for _ in range(self.count)]
        return sum(g[1] for g in got), max(g[3] for g in got) - start, [g[4] for g in got if g[4]]

    def kill(self) -> None:
        for proc in self.procs:
            if proc.is_alive():
                proc.kill()

    def close(self) -> None:
        if self in LIVE:
            LIVE.remove(self)
        for queue in self.queues:
            queue.put(None)
        for proc in self.procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()


# ------------------------------------------------------------------------------------------------ cases


def record(dataset: str, way: str, norm: str, members: int, amp: bool, done: int, seconds: float, epochs: int,
           sampler: GpuSampler | None, extra: dict | None = None) -> dict:
    rate = done / seconds if seconds > 0 and done else 0.0
    row = {"dataset": dataset, "way": way, "norm": norm, "members": members, "amp": amp, "device": DEVICE,
           "epochs_per_trial": epochs, "member_epochs": done, "seconds": round(seconds, 3),
           "member_epochs_per_s": round(rate, 2), "trials_per_hour": round(3600 * rate / TRIAL_EPOCHS, 1),
           **(sampler.summary() if sampler else {"gpu_util_source": "n/a", "gpu_util_mean_pct": "n/a",
                                                   "gpu_memory_peak_mib": "n/a"}),
           **(extra or {})}
    RESULT["cases"].append(row)
    print(f"  {dataset:9s} {way:10s} norm={norm:5s} M={members:<4d} amp={'on ' if amp else 'off'} "
          f"{done:5d} member-epochs in {seconds:7.2f}s = {rate:9.1f}/s  util {row['gpu_util_mean_pct']}%  "
          f"mem {row['gpu_memory_peak_mib']} MiB", flush=True)
    return row


def fail(what: str, exc: BaseException) -> None:
    traceback.print_exc()
    msg = f"{what}: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
    print(f"FAIL: {msg}", flush=True)
    RESULT["failures"].append(msg)


def fresh_memory() -> None:
    """Cached blocks of earlier cases handed back, so that the GPU's memory reading is this case's."""
    if HAS_CUDA:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def measure_in_process(run, box_s: float) -> tuple[int, float, GpuSampler, dict]:
    """``run(deadline)`` (member-epochs trained) repeated until it has run MIN_CASE_S (a few utilisation samples),
    within ``box_s``."""
    fresh_memory()
    with GpuSampler() as sampler:
        sync()
        start = time.monotonic()
        done = 0
        while True:
            done += run(start + box_s)
            sync()
            seconds = time.monotonic() - start
            if seconds >= min(MIN_CASE_S, box_s):
                break
    extra = {"torch_peak_allocated_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1)} if HAS_CUDA else {}
    return done, seconds, sampler, extra


def dataset_cases(name: str, data: TrialData, workers: Workers | None, cases_left: int) -> int:
    """Every case on one dataset; returns how many cases are still to come after it."""
    epochs = EPOCHS[name]
    for norm in NORMS:
        configs = configurations(max(MEMBERS), norm=norm)
        assert len({pack_key(c, data, DEVICE) for c in configs}) == 1, "the configurations must pack"
        # Warm-up (untimed): CUDA context and kernels, both ways.
        run_alone(configs[:1], data, 1, 0.0)
        run_pack(configs[:2], data, 1, 0.0, False)

        def box() -> float:  # this case's share of what is left of the budget
            return max(1.0, min(60.0, remaining() / max(1, cases_left)))

        try:
            done, seconds, sampler, extra = measure_in_process(
                lambda deadline: run_alone(configs, data, epochs, deadline), box())
            record(name, "sequential", norm, 1, False, done, seconds, epochs, sampler, extra)
        except Exception as exc:  # noqa: BLE001
            fail(f"{name} sequential norm={norm}", exc)
        cases_left -= 1

        if not HAS_CUDA:
            skip(f"{NO_CUDA} [concurrent] {name} norm={norm}: {PROCESSES} processes sharing a GPU"
                 + (" (a CPU smoke instead)" if workers else ""))
        if workers is not None:
            try:
                fresh_memory()
                with GpuSampler() as sampler:
                    done, seconds, errors = workers.run(configs, data, epochs, box())
                record(name, "concurrent", norm, PROCESSES, False, done, seconds, epochs, sampler,
                       {"gpu_share": 1.0 / PROCESSES, "errors": errors})
                if errors:
                    RESULT["failures"].append(f"{name} concurrent norm={norm}: {errors[0]}")
            except Exception as exc:  # noqa: BLE001
                fail(f"{name} concurrent norm={norm}", exc)
        cases_left -= 1

        for amp in (False, True):
            if amp and not HAS_CUDA:
                skip(f"{NO_CUDA} [packed amp] {name} norm={norm}: bf16 autocast runs on CUDA only")
                cases_left -= len(MEMBERS)
                continue
            for m in MEMBERS:
                if remaining() < 2:
                    skip(f"SKIP (budget) [packed] {name} norm={norm} M={m} amp={amp}: budget spent")
                    cases_left -= 1
                    continue
                try:
                    done, seconds, sampler, extra = measure_in_process(
                        lambda deadline: run_pack(configs[:m], data, epochs, deadline, amp), box())
                    record(name, "packed", norm, m, amp, done, seconds, epochs, sampler, extra)
                except torch.cuda.OutOfMemoryError as exc:
                    skip(f"SKIP (out of memory) [packed] {name} norm={norm} M={m} amp={amp}: {str(exc)[:120]}")
                    torch.cuda.empty_cache()
                    cases_left -= len([x for x in MEMBERS if x >= m])
                    break
                except Exception as exc:  # noqa: BLE001
                    fail(f"{name} packed norm={norm} M={m} amp={amp}", exc)
                cases_left -= 1
    return cases_left


def ratios() -> list[dict]:
    """Each packed case against sequential and concurrent on the same dataset and norm."""
    out = []
    by = {(c["dataset"], c["norm"], c["way"]): c for c in RESULT["cases"] if c["way"] != "packed"}
    for c in RESULT["cases"]:
        if c["way"] != "packed":
            continue
        row = {"dataset": c["dataset"], "norm": c["norm"], "members": c["members"], "amp": c["amp"],
               "packed_member_epochs_per_s": c["member_epochs_per_s"]}
        for way in ("sequential", "concurrent"):
            base = by.get((c["dataset"], c["norm"], way), {}).get("member_epochs_per_s")
            row[f"vs_{way}"] = round(c["member_epochs_per_s"] / base, 2) if base else None
        row["meets_10x_vs_sequential"] = bool(row["vs_sequential"] and row["vs_sequential"] >= 10)
        out.append(row)
    return out


def markdown() -> str:
    lines = [f"Packed trials, {DEVICE}{' (smoke)' if SMOKE else ''}: member-epochs/s (trials/hour of {TRIAL_EPOCHS}"
             f"-epoch trials), GPU utilisation and peak memory per case",
             "", "| dataset | norm | way | M / K | amp | member-epochs/s | trials/h | GPU util % | GPU mem MiB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in RESULT["cases"]:
        lines.append(f"| {c['dataset']} | {c['norm']} | {c['way']} | {c['members']} | {'bf16' if c['amp'] else 'off'}"
                     f" | {c['member_epochs_per_s']:.1f} | {c['trials_per_hour']:.0f} | {c['gpu_util_mean_pct']} |"
                     f" {c['gpu_memory_peak_mib']} |")
    lines += ["", "| dataset | norm | M | amp | packed / sequential | packed / concurrent | >= 10x |",
              "|---|---|---|---|---|---|---|"]
    for r in RESULT["ratios"]:
        fmt = lambda v: f"{v:.2f}x" if v else "n/a"  # noqa: E731
        lines.append(f"| {r['dataset']} | {r['norm']} | {r['members']} | {'bf16' if r['amp'] else 'off'} | "
                     f"{fmt(r['vs_sequential'])} | {fmt(r['vs_concurrent'])} | "
                     f"{'yes' if r['meets_10x_vs_sequential'] else 'no'} |")
    if RESULT["skipped"]:
        lines += ["", *[f"- {s}" for s in RESULT["skipped"]]]
    return "\n".join(lines) + "\n"


def finish() -> int:
    RESULT["ratios"] = ratios()
    RESULT["elapsed_s"] = round(time.monotonic() - T0, 1)
    RESULT["heavy_modules_loaded"] = sorted(m for m in sys.modules
                                                 if m.split(".")[0] in ("ray", "mlflow", "optuna", "pydantic"))
    table = markdown()
    out_dir = os.environ.get("OUT")
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "gpu_packed.json"), "w") as f:
            json.dump(RESULT, f, indent=1, default=str)
        with open(os.path.join(out_dir, "gpu_packed.md"), "w") as f:
            f.write(table)
        print(f"\nwritten: {out_dir}/gpu_packed.json, {out_dir}/gpu_packed.md")
    else:
        print(json.dumps(RESULT, indent=1, default=str))
    print("\n" + table)
    status = "FAILED" if RESULT["failures"] else "done"
    print(f"gpu_packed {status}: {len(RESULT['cases'])} cases, {len(RESULT['failures'])} failure(s), "
          f"{len(RESULT['skipped'])} skipped, {RESULT['elapsed_s']}s (budget {BUDGET_S:.0f}s)", flush=True)
    return 1 if RESULT["failures"] else 0


def _out_of_time() -> None:
    """At the hard limit: the processes this script started go, and the results say why they stop here."""
    for live in list(LIVE):
        try:
            live.kill() if isinstance(live, Workers) else live.__exit__()
        except Exception:  # noqa: BLE001
            pass
    RESULT["failures"].append(f"hard time limit {HARD_LIMIT_S:.0f}s reached; stopped with partial results")


def main() -> int:
    timer = deadline.arm(HARD_LIMIT_S, T0, _out_of_time, finish)
    torch.set_num_threads(1)  # as one Ray trial with one CPU; CPU work of the GPU cases stays off other cores
    print(f"gpu_packed: torch {torch.__version__}, device {DEVICE}"
          f"{' (' + torch.cuda.get_device_name(0) + ')' if HAS_CUDA else ''}, budget {BUDGET_S:.0f}s"
          f"{', quick' if QUICK else ''}", flush=True)
    if not HAS_CUDA:
        print(f"No CUDA device: the CUDA parts print '{NO_CUDA}'; a CPU smoke runs instead.", flush=True)
        skip(f"{NO_CUDA} [gpu] sequential, concurrent and packed (M in 8, 32, 64, 128, amp off/on) on cuda")
    sets = {"digits": digits()}
    if not SMOKE:
        sets["synthetic"] = synthetic(SYNTHETIC_ROWS)
    else:
        skip(f"SKIP (smoke) [synthetic] the {50_000}-row table runs on CUDA without PACKED_QUICK only")
    for name, data in sets.items():
        RESULT["datasets"][name] = {"n_train": len(data.x_train), "n_val": len(data.x_val),
                                    "n_features": int(data.x_train.shape[1]), "epochs_per_trial": EPOCHS[name]}
    workers = None
    try:
        if PROCESSES < 1:
            skip(f"SKIP (PACKED_PROCESSES={PROCESSES}) [concurrent] no concurrent processes")
        else:
            workers = Workers(PROCESSES)
    except Exception as exc:  # noqa: BLE001
        fail("starting the concurrent processes", exc)
    per_set = len(NORMS) * (2 + 2 * len(MEMBERS))
    cases_left = per_set * len(sets)
    try:
        for name, data in sets.items():
            print(f"\n== {name}: {len(data.x_train)} training rows ({time.monotonic() - T0:.1f}s elapsed)", flush=True)
            try:
                cases_left = dataset_cases(name, data, workers, cases_left)
            except Exception as exc:  # noqa: BLE001
                fail(name, exc)
    finally:
        if workers:
            workers.close()
    code = finish()
    timer.cancel()
    return code


if __name__ == "__main__":
    sys.exit(main())
