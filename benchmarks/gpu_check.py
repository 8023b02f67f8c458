#!/usr/bin/env python3
"""GPU check of the ``trainables`` package: plain PyTorch, no Ray, no MLflow, no Optuna.

Run it as a script from the repository root (the supported form; the GPU machine has only torch, numpy, pandas,
scikit-learn, pyarrow, pyyaml and matplotlib)::

    PYTHONPATH=. python benchmarks/gpu_check.py                 # or: python benchmarks/gpu_check.py /path/to/checkout
    OUT=/some/dir PYTHONPATH=. python benchmarks/gpu_check.py   # also writes $OUT/gpu_check.json

As a script it never imports the ``benchmarks`` package (whose siblings use Ray/MLflow/Optuna). ``python -m
benchmarks.gpu_check`` works only while ``benchmarks/__init__.py`` imports nothing heavy; do not rely on it.

It uses the project's public functions (``train_trial``, ``TrainSettings``, ``Snapshot``, ``train_epochs``,
``save_checkpoint``/``load_checkpoint``/``load_model``, ``validation_metrics``, ``split_dataset``, ``build_mlp``/
``Architecture``, ``make_optimizer``, ``trainables.device``). Only the kernel/sync breakdown calls the loop's
private per-epoch functions, through :func:`private_loop`, which prints a SKIP if a refactor renamed them.

Sections (each prints ``SKIP (no CUDA device) [section] ...`` for its CUDA part on a CPU-only machine, where the
CPU parts still run as a smoke test):

  versions      Python/torch/CUDA/GPU, TF32 defaults; importing trainables loaded no ray/mlflow/optuna;
  device        device="cuda" (unindexed) and "cuda:0" each train a resident trial, a streamed trial and a refit
                (train_epochs); prepare_device(cuda:0, 0.25) caps the process's memory and memory_budget reports the
                share; trial_device([]) is the CPU; prepare_device raises DeviceError where CUDA is unusable;
  throughput    samples/s of train_trial (training + per-epoch validation) on the CPU (1 thread, as a Ray trial)
                and on CUDA: fp32, fp32+TF32 (prepare_device), bf16 AMP, streamed; steady-state epochs are timed
                from the report callback's timestamps, setup separately; streamed == resident metrics;
  breakdown     per-step kernels (profiler) and per-epoch host syncs (sync debug mode), fp32 / AMP / streamed;
  resume        resumed-at-2 vs uninterrupted 4 epochs, dropout 0 and 0.2, on CUDA (CPU without one): must be
                equal when two uninterrupted runs are; the checkpoint read on the CPU, resumed on the CPU;
  metrics       validation_metrics on CUDA vs CPU vs scikit-learn; a trial's val_loss with amp=True equals the fp32
                validation of the same weights (validation is always fp32);
  determinism   two identical runs (CPU smoke; CUDA with and without AMP);
  throughput_compiled  compile=True and compile="reduce-overhead" (CUDA graphs): compile cost and steady samples/s;
  compile       torch.compile across 4+ trials in one process: no recompile-limit hit, no fallback to eager; and
                reduce-overhead with more validation rows than one evaluation batch;
  summary       a table of samples/s and the ratios AMP/fp32, TF32/fp32, graphs/fp32, GPU/CPU (also in the JSON).

Exit status: 0 no failure, 1 at least one FAIL line (or the hard time limit hit), 2 could not import the project.
Environment: GPU_CHECK_BUDGET_S (default 170 s; the compile parts are skipped when too little is left, and a
watchdog stops the run at budget + 8 s with what it has), GPU_CHECK_QUICK=1 (fewer epochs and repetitions: the test
suite's smoke run), GPU_CHECK_COMPILE=0 (skip the compile parts), OUT (where gpu_check.json goes).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import logging
import math
import os
import platform
import sys
import tempfile
import time
import traceback
import warnings

T0 = time.monotonic()
BUDGET_S = float(os.environ.get("GPU_CHECK_BUDGET_S", "170"))
HARD_LIMIT_S = BUDGET_S + 8
QUICK = os.environ.get("GPU_CHECK_QUICK", "0") not in ("", "0", "false", "no")
HEAVY = ("ray", "mlflow", "optuna")

# Run as a script, sys.path[0] is benchmarks/ itself: its modules must not shadow anything (benchmarks.deadline is
# imported by package, from the checkout on the path).
_HERE = os.path.dirname(os.path.abspath(__file__))
if sys.path and os.path.abspath(sys.path[0] or os.getcwd()) == _HERE:
    sys.path.pop(0)
if len(sys.argv) > 1:
    sys.path.insert(0, os.path.abspath(sys.argv[1]))


def _heavy_modules() -> list[str]:
    return sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)


import numpy as np  # noqa: E402
import torch  # noqa: E402

try:
    import trainables  # noqa: F401
    from benchmarks import deadline  # the checkout's own: standard library only
    from trainables import device as D
    from trainables import train as T
    from trainables.checkpoint import load_checkpoint, load_model, save_checkpoint
    from trainables.metrics import loss_function, loss_target, validation_metrics
    from trainables.model import Architecture, architecture_from_params, build_mlp
    from trainables.predict import model_outputs
    from trainables.train import Snapshot, TrainSettings, make_optimizer, train_epochs, train_trial

    def _import_split_dataset():
        """``split_dataset`` from wherever it lives now (trainables.data may be split into several modules)."""
        for name in ("trainables", "trainables.data", "trainables.splitting", "trainables.split"):
            try:
                fn = getattr(importlib.import_module(name), "split_dataset", None)
            except ImportError:
                continue
            if fn is not None:
                return fn
        raise ImportError("no trainables module exports split_dataset")

    split_dataset = _import_split_dataset()
except Exception as exc:  # noqa: BLE001
    print(f"FAIL: cannot import the project's trainables package ({type(exc).__name__}: {exc}); "
          "run from the repository root with PYTHONPATH=. or pass the checkout as the first argument")
    sys.exit(2)

HEAVY_AFTER_IMPORT = _heavy_modules()
# One intra-op thread for all CPU work, as a Ray trial with cpus_per_trial=1 has (and no oversubscription of a
# shared machine: with every core's thread in a barrier, one busy core stalls the whole step).
TORCH_THREADS_AT_START = torch.get_num_threads()
torch.set_num_threads(1)
RESULT: dict = {"failures": [], "warnings": [], "skipped": [], "sections": {}, "quick": QUICK, "budget_s": BUDGET_S}
HAS_CUDA = torch.cuda.is_available()
NO_CUDA = "SKIP (no CUDA device)"
PARAMS = {"n_layers": 2, "units": 128, "activation": "relu", "norm": "none", "dropout": 0.0,
          "optimizer": "adam", "lr": 1e-3, "batch_size": 64}  # benchmarks/throughput.py's network
EPOCHS = 4 if QUICK else 15  # timed epochs of a throughput run (steady state from the third on)
REPS = 3 if QUICK else 10  # repetitions in the breakdown
TF32_DEFAULTS = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
SUMMARY_ROWS: dict[str, dict] = {}  # label -> samples/s etc., filled by the throughput sections
CURRENT = {"section": None}
LAST_COMPILED_TRIAL_S = [0.0]  # how long the last compiled trial took: sizes the time boxes of the next ones


# ------------------------------------------------------------------------------------------------ helpers


def remaining() -> float:
    return BUDGET_S - (time.monotonic() - T0)


def fail(msg: str) -> None:
    print(f"FAIL: {msg}", flush=True)
    RESULT["failures"].append(msg)


def warn(msg: str) -> None:
    print(f"WARN: {msg}", flush=True)
    RESULT["warnings"].append(msg)


def skip(msg: str) -> None:
    print(f"SKIP: {msg}", flush=True)
    RESULT["skipped"].append(msg)


def skip_cuda(section: str, what: str) -> None:
    """The line every CUDA part prints on a machine without a GPU."""
    print(f"{NO_CUDA} [{section}] {what}", flush=True)
    RESULT["skipped"].append(f"{NO_CUDA} [{section}] {what}")


def info(msg: str) -> None:
    print(f"  {msg}", flush=True)


def run_section(name: str, fn, *args):
    CURRENT["section"] = name
    print(f"\n== {name} ({time.monotonic() - T0:.1f}s elapsed)", flush=True)
    try:
        out = fn(*args)
    except Exception as exc:  # noqa: BLE001 - a section's crash is a finding, the others still run
        traceback.print_exc()
        first = str(exc).splitlines()[0][:300] if str(exc) else ""
        fail(f"{name}: raised {type(exc).__name__}: {first}")
        out = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    finally:
        restore_tf32()
    RESULT["sections"][name] = out
    return out


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def restore_tf32() -> None:
    """prepare_device turns TF32 on for the whole process; every measurement other than the TF32 one runs without."""
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = TF32_DEFAULTS


def collect(into: list):
    return lambda metrics, snapshot: into.append((metrics, snapshot))


def state_diff(a: dict, b: dict) -> float:
    """Largest absolute difference between two state dicts (weights and buffers)."""
    assert a.keys() == b.keys(), (sorted(a), sorted(b))
    return max((float((a[k].double().cpu() - b[k].double().cpu()).abs().max()) if a[k].numel() else 0.0 for k in a),
               default=0.0)


def unfinished(metrics: dict) -> dict:
    """Epoch metrics without ``finished`` (which depends on max_epochs, not on the training)."""
    return {k: v for k, v in metrics.items() if k != "finished"}


def _tensors(obj, prefix=""):
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}/{i}")


def public_model(params: dict, data, device, seed: int = 0):
    """A configuration's network, optimizer and loss from the public pieces (what the loop builds)."""
    torch.manual_seed(seed)
    n_outputs = len(data.preprocessor["classes"]) if data.task == "multiclass" else 1
    model = build_mlp(architecture_from_params(params, data.x_train.shape[1], n_outputs)).to(device)
    return model, make_optimizer(params, model), loss_function(data.task, params.get("loss"))


def fp32_validation(weights: dict, description: dict, data, device) -> dict:
    """Validation loss and metrics of ``weights`` computed here, in fp32, from public pieces only."""
    device = torch.device(device)
    model = build_mlp(Architecture.from_dict(description["architecture"])).to(device)
    model.load_state_dict(weights)
    model.eval()
    xv, yv = torch.tensor(data.x_val, device=device), torch.tensor(data.y_val, device=device)
    with torch.inference_mode():
        outputs = model(xv).float()
        val_loss = float(loss_function(data.task, description.get("params", {}).get("loss"))(
            outputs, loss_target(data.task, yv)))
    scale = data.preprocessor.get("target_scale", 1.0)
    return {"val_loss": val_loss, **validation_metrics(data.task, outputs, yv, scale)}


def timed_trial(params: dict, data, settings, resume=None) -> dict:
    """Run train_trial, time-stamping every report (after a device sync): per-epoch times without extra syncs."""
    marks: list = []

    def report(metrics, snapshot):
        sync(settings.device)
        marks.append((time.perf_counter(), metrics, snapshot))

    sync(settings.device)
    start = time.perf_counter()
    train_trial(params, data, settings, report, resume)
    sync(settings.device)
    return {"start": start, "end": time.perf_counter(), "marks": marks}


def rates(run: dict, n_rows: int) -> dict:
    """Steady-state samples/s from the epochs after the second (the first ones include setup, compilation and CUDA
    graph recording), and the one-off cost: time to the k-th report minus k steady epochs."""
    times = [m[0] for m in run["marks"]]
    epochs = len(times)
    k = min(2, epochs - 1)
    if epochs <= 1:
        steady = times[-1] - run["start"]
        k = 1
    else:
        steady = (times[-1] - times[k - 1]) / (epochs - k)
    overhead = (times[k - 1] - run["start"]) - k * steady
    return {"samples_per_s": round(n_rows / steady), "ms_per_epoch": round(1000 * steady, 3),
            "setup_or_compile_s": round(max(0.0, overhead), 3), "epochs": epochs,
            "total_s": round(run["end"] - run["start"], 3)}


def count_syncs(fn) -> int:
    """Host synchronisations ``fn`` performs on CUDA (torch's sync debug mode warns once per sync)."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return sum("synchroniz" in str(w.message) for w in caught)


def cudagraph_skips() -> int:
    """How many compiled graphs inductor has refused to run as CUDA graphs so far (reduce-overhead then runs them
    as plain compiled code; TORCH_LOGS=cudagraphs says why)."""
    from torch._dynamo.utils import counters

    return int(counters["inductor"]["cudagraph_skips"])


class Unavailable(Exception):
    """A private function of the training loop is gone or changed: the measurement that needs it is skipped."""


def private_loop():
    """The loop's per-epoch functions ``(_train_epoch, _evaluate)``, used only by the breakdown (which measures the
    real loop, not a copy of it). Raises :class:`Unavailable` when a refactor renamed them or changed their
    parameters, so the breakdown prints a SKIP instead of crashing."""
    expected = {
        "_train_epoch": ["model", "optimizer", "loss_fn", "task", "x", "y", "batch_size", "generator", "use_amp",
                         "device"],
        "_evaluate": ["model", "loss_fn", "task", "x", "y", "prep", "device"],
    }
    found = []
    for name, params in expected.items():
        fn = getattr(T, name, None)
        if fn is None:
            raise Unavailable(f"trainables.train.{name} no longer exists")
        got = list(inspect.signature(fn).parameters)
        if got != params:
            raise Unavailable(f"trainables.train.{name}({', '.join(got)}) no longer takes ({', '.join(params)})")
        found.append(fn)
    return tuple(found)


# ------------------------------------------------------------------------------------------------ sections


def versions() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda_runtime": torch.version.cuda,
           "cuda_available": HAS_CUDA, "numpy": np.__version__, "quick": QUICK,
           "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
           "torch_num_threads_default": TORCH_THREADS_AT_START, "torch_num_threads_used": torch.get_num_threads(),
           "cpu_count": os.cpu_count(),
           "trainables": os.path.dirname(trainables.__file__),
           "modules_ray_mlflow_optuna_after_import": HEAVY_AFTER_IMPORT,
           "tf32_matmul_default": TF32_DEFAULTS[0], "tf32_cudnn_default": TF32_DEFAULTS[1]}
    if HAS_CUDA:
        props = torch.cuda.get_device_properties(0)
        free, total = torch.cuda.mem_get_info(0)
        fraction = getattr(T, "DEVICE_DATA_FRACTION", None)
        out.update({"gpu": torch.cuda.get_device_name(0), "capability": list(torch.cuda.get_device_capability(0)),
                    "gpu_count": torch.cuda.device_count(), "total_mem_gib": round(props.total_memory / 2**30, 1),
                    "free_mem_gib": round(free / 2**30, 1), "cudnn": torch.backends.cudnn.version(),
                    "bf16_supported": torch.cuda.is_bf16_supported(),
                    "resident_data_limit_gib": round(fraction * free / 2**30, 1) if fraction else None})
    else:
        skip_cuda("versions", "GPU name, capability, memory, cuDNN, bf16 support")
    for k, v in out.items():
        info(f"{k}: {v}")
    if HEAVY_AFTER_IMPORT:
        fail(f"importing trainables loaded {HEAVY_AFTER_IMPORT} (it must stay free of Ray, MLflow and Optuna)")
    else:
        info("importing trainables (train, device, checkpoint, metrics, model, predict) loaded no ray/mlflow/optuna")
    return out


def device_section(data) -> dict:
    out: dict = {}
    # What works without a GPU: the device decisions themselves.
    cpu_checks = {
        "trial_device([]) is cpu": D.trial_device([]) == torch.device("cpu"),
        "trial_device(['3'], visible='2,3') is cuda:1": D.trial_device(["3"], visible="2,3") == torch.device("cuda", 1),
        "canonical('cuda') has an index": D.canonical("cuda").index is not None,
        "same_device(cuda, cuda:0)": D.same_device(torch.device("cuda"), torch.device("cuda:0")),
        "same_device(cpu, cpu:0)": D.same_device(torch.device("cpu"), torch.device("cpu", 0)),
        "local_device(0) is cpu": D.local_device(0) == torch.device("cpu"),
        "local_device(1)": str(D.local_device(1)),
        "memory_budget(cpu) is None": D.memory_budget(torch.device("cpu")) is None,
    }
    for name, ok in cpu_checks.items():
        out[name] = ok
        info(f"{name}: {ok}")
        if ok is False:
            fail(f"trainables.device: {name} does not hold")
    if D.local_device(1) != (torch.device("cuda", 0) if HAS_CUDA else torch.device("cpu")):
        fail(f"local_device(1) is {D.local_device(1)} with CUDA available={HAS_CUDA}")
    if not HAS_CUDA:
        try:
            D.prepare_device(torch.device("cuda", 0))
            fail("prepare_device(cuda:0) on a machine without CUDA did not raise DeviceError")
        except D.DeviceError as exc:
            out["prepare_device without CUDA"] = f"DeviceError: {str(exc)[:120]}"
            info(f"prepare_device(cuda:0) without CUDA raises DeviceError: ok ({str(exc)[:80]}...)")
        skip_cuda("device", "train_trial resident/streamed and train_epochs with device='cuda' and 'cuda:0'; "
                  "prepare_device(cuda:0, 0.25) memory fraction; memory_budget share")
        out["device_for_checks"] = None
        return out

    noop = lambda m, s: None  # noqa: E731
    for spelling in ("cuda", "cuda:0"):
        one_epoch = TrainSettings(max_epochs=1, device=spelling)
        checks = {
            "train_trial resident": lambda: train_trial(PARAMS, data, dataclasses.replace(one_epoch, stream=False), noop),
            "train_trial streamed": lambda: train_trial(PARAMS, data, dataclasses.replace(one_epoch, stream=True), noop),
            "train_epochs (refit)": lambda: train_epochs(PARAMS, data, 1, 0, device=spelling),
        }
        for name, fn in checks.items():
            key = f"device={spelling!r} {name}"
            try:
                fn()
                out[key] = "ok"
                info(f"{key}: ok")
            except Exception as exc:  # noqa: BLE001
                out[key] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
                fail(f"{key}: {out[key]}")
    unindexed_ok = all(v == "ok" for k, v in out.items() if k.startswith("device='cuda' "))
    out["device_for_checks"] = "cuda" if unindexed_ok else "cuda:0"
    if out["device_for_checks"] == "cuda:0":
        info("the remaining CUDA checks use device='cuda:0' so they still measure something")

    # prepare_device: canonical device, TF32, the memory cap of a fractional GPU; memory_budget's share.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepared = D.prepare_device(torch.device("cuda"))
    out["prepare_device('cuda')"] = str(prepared)
    out["prepare_device_warnings"] = [str(w.message)[:200] for w in caught]
    if caught:
        warn(f"prepare_device warns on torch {torch.__version__}: {str(caught[0].message)[:200]}")
    if prepared != torch.device("cuda", torch.cuda.current_device()):
        fail(f"prepare_device('cuda') returned {prepared}, not an indexed device")
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    out["tf32_after_prepare_device"] = list(tf32)
    if not all(tf32):
        fail(f"prepare_device did not turn TF32 on (matmul, cudnn) = {tf32}")
    total = torch.cuda.get_device_properties(0).total_memory
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            D.prepare_device(torch.device("cuda", 0), 0.25)
        getter = getattr(torch.cuda, "get_per_process_memory_fraction", None)
        if getter is not None:
            out["memory_fraction_after_prepare_device_0.25"] = getter(0)
            info(f"prepare_device(cuda:0, 0.25): per-process memory fraction {getter(0)}")
            if abs(getter(0) - 0.25) > 1e-9:
                fail(f"prepare_device(cuda:0, 0.25) left the memory fraction at {getter(0)}")
        # The cap is what matters: an allocation above a quarter of the GPU must fail, one below it succeed.
        try:
            block = torch.empty(int(0.3 * total), dtype=torch.uint8, device="cuda:0")
            del block
            out["allocation_above_share"] = "succeeded"
            fail("with gpu_share 0.25 the process could still allocate 30% of the GPU (no memory cap)")
        except torch.cuda.OutOfMemoryError:
            out["allocation_above_share"] = "OutOfMemoryError (capped)"
            info("allocating 30% of the GPU under a 0.25 share raises OutOfMemoryError: capped")
        torch.cuda.empty_cache()
        try:
            block = torch.empty(int(0.2 * total), dtype=torch.uint8, device="cuda:0")
            del block
            out["allocation_below_share"] = "succeeded"
        except torch.cuda.OutOfMemoryError as exc:
            out["allocation_below_share"] = f"OutOfMemoryError: {str(exc)[:150]}"
            fail(f"with gpu_share 0.25 the process cannot allocate 20% of the GPU: {str(exc)[:150]}")
        torch.cuda.empty_cache()
        budget_share = D.memory_budget(torch.device("cuda", 0), 0.25)
        budget_full = D.memory_budget(torch.device("cuda"), 1.0)
        out["memory_budget_gib"] = {"share_0.25": round(budget_share / 2**30, 2), "whole": round(budget_full / 2**30, 2),
                                    "total": round(total / 2**30, 2)}
        info(f"memory_budget: share 0.25 -> {budget_share / 2**30:.1f} GiB, whole GPU -> {budget_full / 2**30:.1f} GiB "
             f"of {total / 2**30:.1f} GiB")
        if not 0 < budget_share <= 0.25 * total or budget_full <= budget_share:
            fail(f"memory_budget does not report the 0.25 share: {out['memory_budget_gib']}")
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, 0)
        torch.cuda.empty_cache()
    try:
        D.prepare_device(torch.device("cuda", torch.cuda.device_count()))
        fail("prepare_device on a GPU index beyond the visible ones did not raise DeviceError")
    except D.DeviceError:
        info("prepare_device(cuda:<count>) raises DeviceError: ok")
    torch.cuda.set_device(0)
    return out


def throughput(data, dev: str | None) -> dict:
    """samples/s of train_trial (training + per-epoch validation, as benchmarks/throughput.py measures it)."""
    n = len(data.x_train)
    runs = [("cpu (1 thread)", "cpu", {}), ("cpu streamed (1 thread)", "cpu", {"stream": True})]
    if dev:
        runs += [("cuda fp32", dev, {"stream": False}),
                 ("cuda fp32+tf32 (prepare_device)", dev, {"stream": False, "tf32": True}),
                 ("cuda bf16 amp", dev, {"stream": False, "amp": True}),
                 ("cuda streamed fp32", dev, {"stream": True})]
    else:
        skip_cuda("throughput", "CUDA fp32, fp32+TF32, bf16 AMP and streamed samples/s")
    out, finals = {}, {}
    threads = torch.get_num_threads()
    for label, device, opts in runs:
        opts = dict(opts)
        tf32 = opts.pop("tf32", False)
        if device == "cpu":
            torch.set_num_threads(1)  # a Ray trial with cpus_per_trial=1
        try:
            if tf32:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    D.prepare_device(torch.device(device))  # what every trial and refit does first
            train_trial(PARAMS, data, TrainSettings(max_epochs=1, device=device, **opts), lambda m, s: None)  # warm-up
            run = timed_trial(PARAMS, data, TrainSettings(max_epochs=EPOCHS, device=device, checkpoint_every=5, **opts))
        finally:
            torch.set_num_threads(threads)
            restore_tf32()
        last = run["marks"][-1][1]
        finals[label] = last
        row = {**rates(run, n), "final_val_loss": last["val_loss"], "final_val_accuracy": last["val_accuracy"]}
        out[label] = SUMMARY_ROWS[label] = row
        info(f"{label:34s} {row['samples_per_s']:>9,} samples/s  {row['ms_per_epoch']:8.2f} ms/epoch  "
             f"setup {row['setup_or_compile_s']:6.3f}s  val_loss {last['val_loss']:.5f}  acc {last['val_accuracy']:.4f}")
    pairs = [("cpu (1 thread)", "cpu streamed (1 thread)")] + ([("cuda fp32", "cuda streamed fp32")] if dev else [])
    for resident, streamed in pairs:
        a, b = finals[resident], finals[streamed]
        same = all(a[k] == b[k] for k in a if k != "epoch")
        out[f"{streamed} == {resident}"] = same
        info(f"{streamed} metrics == {resident}: {same}")
        if not same:
            fail(f"the streamed path differs from the resident one ({streamed}: val_loss {b['val_loss']!r} vs "
                 f"{a['val_loss']!r})")
    if dev:
        a, c = finals["cuda fp32"], finals["cpu (1 thread)"]
        rel = abs(a["val_loss"] - c["val_loss"]) / max(abs(c["val_loss"]), 1e-12)
        out["cuda_fp32_vs_cpu_val_loss_rel"] = rel
        info(f"after {EPOCHS} epochs, CUDA fp32 vs CPU val_loss relative difference: {rel:.2e} (same init and batches)")
        if rel > 0.25:
            fail(f"CUDA fp32 training diverges from CPU training: val_loss {a['val_loss']:.5f} vs {c['val_loss']:.5f}")
        elif rel > 0.05:
            warn(f"CUDA fp32 and CPU training drift apart by {rel:.1%} in val_loss after {EPOCHS} epochs")
    return out


def _profile_counts(train_epoch, model, opt, loss_fn, task, x, y, amp, device, steps) -> dict:
    from torch.profiler import ProfilerActivity, profile

    gen = torch.Generator().manual_seed(123)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        train_epoch(model, opt, loss_fn, task, x, y, 64, gen, amp, device)
        torch.cuda.synchronize()
    kernels = launches = syncs = memcpy = 0
    for e in prof.events():
        if str(e.device_type).endswith("CUDA"):
            kernels += 1
            memcpy += ("Memcpy" in e.name) or ("Memset" in e.name)
        elif "LaunchKernel" in e.name:
            launches += 1
        elif "Synchronize" in e.name:
            syncs += 1
    return {"device_ops_per_step": round(kernels / steps, 1), "memcpy_memset_per_epoch": memcpy,
            "launch_calls_per_step": round(launches / steps, 1), "sync_api_calls_per_epoch": max(0, syncs - 1)}


def breakdown(data, dev: str | None) -> dict:
    """Per-step kernels and per-epoch host syncs of the real loop, and its time split (train epoch / validation)."""
    out: dict = {}
    if not dev:
        skip_cuda("breakdown", "kernel launches per step and host syncs per epoch (fp32, bf16 AMP, streamed)")
    try:
        train_epoch, evaluate = private_loop()
    except Unavailable as exc:
        skip(f"[breakdown] {exc}: per-epoch split not measured (the trial-level numbers below still are)")
        train_epoch = evaluate = None
    steps = math.ceil(len(data.x_train) / 64)
    threads = torch.get_num_threads()
    rows = [("cpu (1 thread)", "cpu", False, False)]
    if dev:
        rows += [("cuda fp32", dev, False, False), ("cuda bf16 amp", dev, True, False),
                 ("cuda streamed fp32", dev, False, True)]
    for label, device_name, amp, stream in (rows if train_epoch else []):
        device = D.canonical(device_name)
        torch.set_num_threads(1 if device.type == "cpu" else threads)
        try:
            model, opt, loss_fn = public_model(PARAMS, data, device)
            arrays = (data.x_train, data.y_train, data.x_val, data.y_val)
            x, y, xv, yv = (torch.tensor(a) if stream else torch.tensor(a, device=device) for a in arrays)
            task, prep = data.task, data.preprocessor
            for e in range(2):  # warm-up
                train_epoch(model, opt, loss_fn, task, x, y, 64, torch.Generator().manual_seed(e), amp, device)
                evaluate(model, loss_fn, task, xv, yv, prep, device)
            row: dict = {}
            sync(device)
            start = time.perf_counter()
            for e in range(REPS):
                train_epoch(model, opt, loss_fn, task, x, y, 64, torch.Generator().manual_seed(e), amp, device)
            sync(device)
            seconds = time.perf_counter() - start
            row["train_epoch_ms"] = round(1000 * seconds / REPS, 3)
            row["step_us"] = round(1e6 * seconds / REPS / steps, 1)
            start = time.perf_counter()
            for _ in range(REPS):
                evaluate(model, loss_fn, task, xv, yv, prep, device)
            sync(device)
            row["evaluate_ms"] = round(1000 * (time.perf_counter() - start) / REPS, 3)
            if device.type == "cuda":
                gen = torch.Generator().manual_seed(7)
                row["host_syncs_train_epoch"] = count_syncs(
                    lambda: train_epoch(model, opt, loss_fn, task, x, y, 64, gen, amp, device))
                row["host_syncs_evaluate"] = count_syncs(lambda: evaluate(model, loss_fn, task, xv, yv, prep, device))
                if row["host_syncs_train_epoch"] >= steps:
                    fail(f"{label}: {row['host_syncs_train_epoch']} host syncs in one epoch of {steps} steps: "
                         "something syncs per batch (train.py says it does not)")
                try:
                    row.update(_profile_counts(train_epoch, model, opt, loss_fn, task, x, y, amp, device, steps))
                except Exception as exc:  # noqa: BLE001 - CUPTI missing etc.
                    row["profiler_error"] = f"{type(exc).__name__}: {exc}"[:200]
                    warn(f"{label}: profiler unavailable ({row['profiler_error'][:120]})")
        finally:
            torch.set_num_threads(threads)
        out[label] = row
        info(f"{label:20s} {row}")
    if dev:
        # The whole public path per epoch (training, validation, best-model copy, snapshot): 3 epochs minus 1.
        for amp in (False, True):
            def trial(epochs, amp=amp):
                train_trial(PARAMS, data, TrainSettings(max_epochs=epochs, device=dev, amp=amp, checkpoint_every=1),
                            lambda m, s: None)
            trial(1)
            per_epoch = (count_syncs(lambda: trial(3)) - count_syncs(lambda: trial(1))) / 2
            out[f"host_syncs_per_train_trial_epoch amp={amp}"] = per_epoch
            info(f"host syncs per epoch of train_trial (amp={amp}, snapshot every epoch): {per_epoch:g} "
                 f"({steps} steps an epoch)")
            if per_epoch >= steps:
                fail(f"train_trial syncs {per_epoch:g} times an epoch of {steps} steps (amp={amp})")
    return out


def resume(data, dev: str | None) -> dict:
    device = dev or "cpu"
    if not dev:
        skip_cuda("resume", "resume on CUDA and the CUDA checkpoint read on the CPU: the same steps run on the CPU")
    out: dict = {"device": device}
    params = {**PARAMS, "norm": "batch"}  # batch norm: buffers (running stats, num_batches_tracked) travel too
    for dropout in (0.0, 0.2):
        p = {**params, "dropout": dropout}
        row: dict = {}
        out[f"dropout_{dropout}"] = row
        full, again, part, resumed = [], [], [], []
        settings = TrainSettings(max_epochs=4, device=device, checkpoint_every=1)
        train_trial(p, data, settings, collect(full))
        train_trial(p, data, settings, collect(again))
        noise = state_diff(full[-1][1].state["model"], again[-1][1].state["model"])
        train_trial(p, data, dataclasses.replace(settings, max_epochs=2), collect(part))
        snapshot = part[-1][1]
        if not isinstance(snapshot, Snapshot):
            fail(f"train_trial handed out {type(snapshot).__name__}, not a Snapshot, on its last epoch")
            continue
        rng = snapshot.state.get("rng")
        row["checkpoint_rng"] = sorted(rng) if isinstance(rng, dict) else None
        if not rng or (torch.device(device).type == "cuda" and "cuda" not in rng):
            fail(f"the checkpoint carries no RNG state for {device} (keys: {row['checkpoint_rng']})")
        with tempfile.TemporaryDirectory() as tmp:
            save_checkpoint(tmp, snapshot.state, snapshot.description)
            if HAS_CUDA:
                raw = torch.load(os.path.join(tmp, "state.pt"), weights_only=True, map_location=None)
                row["state.pt tensor devices without map_location"] = sorted({str(v.device) for _, v in _tensors(raw)})
            state = load_checkpoint(tmp)
            off_cpu = [k for k, v in _tensors(state) if v.device.type != "cpu"]
            if off_cpu:
                fail(f"load_checkpoint left tensors off the CPU: {off_cpu[:5]}")
            train_trial(p, data, settings, collect(resumed), resume=state)
            diff = state_diff(full[-1][1].state["model"], resumed[-1][1].state["model"])
            same_metrics = full[-1][0] == resumed[-1][0]
            equal = diff == 0 and same_metrics
            row.update({"resume_vs_uninterrupted_max_abs_diff": diff, "uninterrupted_run_to_run_max_abs_diff": noise,
                        "metrics_equal": same_metrics, "equal": equal,
                        "val_loss_resumed": resumed[-1][0]["val_loss"],
                        "val_loss_uninterrupted": full[-1][0]["val_loss"]})
            info(f"dropout {dropout}: resumed-at-2 vs uninterrupted 4 epochs on {device}: max |dw| = {diff:.3g}, "
                 f"metrics equal: {same_metrics} (two uninterrupted runs: {noise:.3g}); val_loss "
                 f"{resumed[-1][0]['val_loss']:.6f} vs {full[-1][0]['val_loss']:.6f}")
            if noise == 0 and not equal:
                fail(f"dropout {dropout}: a trial resumed at epoch 2 on {device} differs from the uninterrupted one "
                     f"(max |dw| {diff:.3g}, metrics equal: {same_metrics}) although two uninterrupted runs are "
                     "bitwise equal")
            elif noise > 0:
                warn(f"dropout {dropout}: two uninterrupted runs on {device} differ (max |dw| {noise:.3g}), so resume "
                     "can only be compared approximately")
                if diff > max(1e-5, 10 * noise):
                    fail(f"dropout {dropout}: resume on {device} is further from the uninterrupted run ({diff:.3g}) "
                         f"than run-to-run noise ({noise:.3g})")

            # The same checkpoint read on the CPU: its model, and training resumed there.
            cpu_model, description = load_model(os.path.join(tmp, "model"))
            if any(t.device.type != "cpu" for t in cpu_model.state_dict().values()):
                fail("load_model returned a model with tensors off the CPU")
            device_model = build_mlp(Architecture.from_dict(description["architecture"])).to(device)
            device_model.load_state_dict(snapshot.state["best_model"])
            device_model.eval()
            with torch.inference_mode():
                device_out = device_model(torch.tensor(data.x_val, device=device)).float().cpu()
            cpu_out = torch.from_numpy(model_outputs(cpu_model, data.x_val))
            out_diff = float((device_out - cpu_out).abs().max())
            agree = float((device_out.argmax(1) == cpu_out.argmax(1)).float().mean())
            row["cpu_loaded_model_vs_device_max_abs_diff"] = out_diff
            row["cpu_loaded_model_vs_device_argmax_agreement"] = agree
            info(f"  model/ loaded on CPU vs the same weights on {device}: max |dlogit| {out_diff:.3g}, "
                 f"argmax agreement {agree:.4f}")
            if out_diff > 1e-3 or agree < 0.99:
                fail(f"the checkpoint's model on CPU disagrees with {device}: max |dlogit| {out_diff:.3g}, "
                     f"agreement {agree}")
            cpu_resumed: list = []
            train_trial(p, data, TrainSettings(max_epochs=3, device="cpu", checkpoint_every=1), collect(cpu_resumed),
                        resume=load_checkpoint(tmp))
            last = cpu_resumed[-1]
            opt_devices = sorted({str(v.device) for _, v in _tensors(last[1].state["optimizer"])})
            row["resumed_on_cpu"] = {"epoch": last[0]["epoch"], "val_loss": last[0]["val_loss"],
                                     "optimizer_devices": opt_devices,
                                     "uninterrupted_epoch_3_val_loss": full[2][0]["val_loss"]}
            info(f"  {device} checkpoint resumed on CPU: epoch {last[0]['epoch']}, val_loss {last[0]['val_loss']:.6f} "
                 f"(uninterrupted on {device}: {full[2][0]['val_loss']:.6f}), optimizer state on {opt_devices}")
            if last[0]["epoch"] != 3 or opt_devices != ["cpu"]:
                fail(f"resuming the {device} checkpoint on CPU went wrong: {row['resumed_on_cpu']}")
            if device == "cpu" and noise == 0 and unfinished(last[0]) != unfinished(full[2][0]):
                fail(f"dropout {dropout}: resumed on the CPU for one epoch differs from the uninterrupted epoch 3")
    return out


def metrics_check(data, dev: str | None) -> dict:
    from sklearn import metrics as skm

    out: dict = {}
    rng = np.random.default_rng(0)
    model, _, _ = public_model(PARAMS, data, "cpu")
    model.eval()
    with torch.inference_mode():
        logits = model(torch.tensor(data.x_val)).float()
    n = 1000
    cases = {
        "multiclass": (logits, torch.tensor(data.y_val), 1.0),
        "binary": (torch.tensor(rng.normal(size=(n, 1)), dtype=torch.float32), torch.tensor(rng.integers(0, 2, n)), 1.0),
        "regression": (torch.tensor(rng.normal(size=(n, 1)), dtype=torch.float32),
                       torch.tensor(rng.normal(size=n), dtype=torch.float32), 2.5),
    }
    if not dev:
        skip_cuda("metrics", "validation_metrics on CUDA and its host syncs; amp=True trial val_loss vs fp32 on CUDA "
                  "(the CPU comparisons still run)")
    for task, (outputs, y, scale) in cases.items():
        ref = _sklearn_reference(skm, task, outputs.double().numpy(), y.numpy(), scale)
        results = {"cpu": validation_metrics(task, outputs, y, scale)}
        if dev:
            results["cuda"] = validation_metrics(task, outputs.to(dev), y.to(dev), scale)
            on_device = outputs.to(dev), y.to(dev)
            out[f"{task}_host_syncs_on_cuda"] = count_syncs(lambda: validation_metrics(task, *on_device, scale))
        for where, values in results.items():
            for key, expected in ref.items():
                if not math.isclose(values[key], expected, rel_tol=1e-9, abs_tol=1e-9):
                    fail(f"validation_metrics({task}) on {where}: {key} = {values[key]!r}, scikit-learn says {expected!r}")
        if dev:
            for key in results["cpu"]:
                if not math.isclose(results["cpu"][key], results["cuda"][key], rel_tol=1e-12, abs_tol=1e-12):
                    fail(f"validation_metrics({task}) {key}: CUDA {results['cuda'][key]!r} != CPU {results['cpu'][key]!r}")
        out[task] = results
        shown = "  ".join(f"{w}: " + ", ".join(f"{k}={v:.6f}" for k, v in r.items()) for w, r in results.items())
        syncs = f"  (host syncs on CUDA: {out[f'{task}_host_syncs_on_cuda']})" if dev else ""
        info(f"{task:10s} {shown} == scikit-learn{syncs}")
    out["amp_trial_validation_is_fp32"] = _amp_validation(data, dev or "cpu")
    return out


def _sklearn_reference(skm, task, outputs, y, scale):
    if task == "regression":
        pred, true = outputs.reshape(-1) * scale, y.astype(np.float64) * scale
        return {"val_mae": skm.mean_absolute_error(true, pred), "val_rmse": math.sqrt(skm.mean_squared_error(true, pred)),
                "val_r2": skm.r2_score(true, pred)}
    pred = (outputs.reshape(-1) > 0).astype(int) if task == "binary" else outputs.argmax(1)
    average = "binary" if task == "binary" else "macro"
    return {"val_accuracy": skm.accuracy_score(y, pred), "val_f1": skm.f1_score(y, pred, average=average, zero_division=0)}


def _amp_validation(data, device: str) -> dict:
    """A trial trained with amp=True reports the fp32 validation of its weights (validation never autocasts): its
    val_loss and metrics equal an fp32 evaluation of the snapshot's weights, computed here from public pieces."""
    out = {}
    diabetes = split_dataset("sklearn:diabetes", "regression", 0.15, 0.15, 0).trial_data()
    epochs = 2 if QUICK else 8
    for name, d in (("digits", data), ("diabetes", diabetes)):
        reports: list = []
        settings = TrainSettings(max_epochs=epochs, device=device, amp=True, checkpoint_every=1)
        train_trial(PARAMS, d, settings, collect(reports))
        metrics, snapshot = reports[-1]
        weights = snapshot.state["model"]
        here = fp32_validation(weights, snapshot.description, d, device)
        rel = {k: abs(metrics[k] - v) / max(abs(v), 1e-12) for k, v in here.items()}
        cpu = fp32_validation(weights, snapshot.description, d, "cpu")
        rel_cpu = {k: abs(cpu[k] - v) / max(abs(v), 1e-2) for k, v in here.items()}
        out[name] = {"trial_amp": {k: metrics[k] for k in here}, "fp32_same_weights": here, "rel_diff": rel,
                     "fp32_cpu_same_weights": cpu, "device_vs_cpu_rel_diff": rel_cpu}
        info(f"{name}: amp=True trial on {device} vs fp32 validation of its weights, max relative difference "
             f"{max(rel.values()):.2e}; {device} vs CPU fp32 {max(rel_cpu.values()):.2e}")
        if max(rel.values()) > 1e-6:
            fail(f"{name}: an amp=True trial's validation differs from fp32 validation of the same weights by up to "
                 f"{max(rel.values()):.1e} relative (more than float rounding: validation is not fp32): {rel}")
        if max(rel_cpu.values()) > 1e-4:
            fail(f"{name}: fp32 validation on {device} differs from the CPU on the same weights: {rel_cpu}")
    return out


def determinism(data, dev: str | None) -> dict:
    out: dict = {}
    p = {**PARAMS, "norm": "batch", "dropout": 0.1}
    runs_on = [("cpu", False)]
    if dev:
        runs_on += [(dev, False), (dev, True)]
    else:
        skip_cuda("determinism", "run-to-run determinism on CUDA (fp32 and bf16 AMP)")
    for device, amp in runs_on:
        states = []
        for _ in range(2):
            reports: list = []
            train_trial(p, data, TrainSettings(max_epochs=2 if QUICK and device == "cpu" else 4, device=device, amp=amp),
                        collect(reports))
            states.append(reports[-1][1].state["model"])
        diff = state_diff(*states)
        out[f"{device} amp={amp}"] = diff
        info(f"two identical runs on {device} (amp={amp}, batch norm, dropout 0.1): max |dw| = {diff:.3g}")
        if diff > 0:
            warn(f"training on {device} is not bitwise reproducible (amp={amp}, max |dw| {diff:.3g}); "
                 "'the same configuration trains the same way' does not hold there")
    return out


def _compile_enabled(section: str, dev: str | None, what: str) -> bool:
    if not dev:
        skip_cuda(section, what)
        return False
    if os.environ.get("GPU_CHECK_COMPILE", "1") == "0":
        skip(f"[{section}] disabled by GPU_CHECK_COMPILE=0")
        return False
    return True


def throughput_compiled(data, dev: str | None) -> dict:
    """compile=True and compile="reduce-overhead" (CUDA graphs): the one-off cost of the first epochs (compilation,
    graph recording) apart from steady-state samples/s. Every train_trial resets Dynamo, so each trial pays it."""
    if not _compile_enabled("throughput_compiled", dev, "samples/s with compile=True and compile='reduce-overhead'"):
        return {}
    n = len(data.x_train)
    out: dict = {}
    eager = SUMMARY_ROWS.get("cuda fp32", {}).get("final_val_loss")
    modes = (("cuda compile=True", True, 70), ("cuda reduce-overhead (CUDA graphs)", "reduce-overhead", 55))
    for label, mode, need in modes:
        need = max(need, 1.5 * LAST_COMPILED_TRIAL_S[0])  # the previous compiled trial tells what one costs here
        if remaining() < need:
            skip(f"[throughput_compiled] {label}: only {remaining():.0f}s of the budget left (needs {need}s)")
            continue
        skips = cudagraph_skips()
        run = timed_trial(PARAMS, data, TrainSettings(max_epochs=EPOCHS, device=dev, checkpoint_every=5, compile=mode,
                                                      stream=False))
        last = run["marks"][-1][1]
        row = {**rates(run, n), "final_val_loss": last["val_loss"], "final_val_accuracy": last["val_accuracy"],
               "cudagraph_skips": cudagraph_skips() - skips}
        if mode == "reduce-overhead" and row["cudagraph_skips"]:
            warn(f"{label}: inductor ran {row['cudagraph_skips']} graph(s) without CUDA graphs (TORCH_LOGS=cudagraphs "
                 "says why): this row is not a CUDA-graphs measurement")
        out[label] = SUMMARY_ROWS[label] = row
        LAST_COMPILED_TRIAL_S[0] = row["total_s"]
        info(f"{label:34s} {row['samples_per_s']:>9,} samples/s  {row['ms_per_epoch']:8.2f} ms/epoch  "
             f"compile+record {row['setup_or_compile_s']:6.2f}s  val_loss {last['val_loss']:.5f}")
        if eager is not None and abs(last["val_loss"] - eager) / max(abs(eager), 1e-12) > 0.05:
            warn(f"{label}: val_loss {last['val_loss']:.5f} after {EPOCHS} epochs vs eager fp32 {eager:.5f}")
    return out


def compile_check(data, dev: str | None) -> dict:
    if not _compile_enabled("compile", dev, "torch.compile across trials in one process; reduce-overhead with "
                            "validation larger than one evaluation batch"):
        return {}
    if remaining() < 40:
        skip(f"[compile] only {remaining():.0f}s of the budget left")
        return {}
    from torch._dynamo.utils import counters

    messages: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record):
            try:
                messages.append(record.getMessage().splitlines()[0])
            except Exception:  # noqa: BLE001
                pass

    handler = Capture(level=logging.WARNING)
    loggers = [logging.getLogger(name) for name in ("torch._dynamo", "torch._inductor", "trainables.train")]
    for lg in loggers:
        lg.addHandler(handler)
    trials = [
        ({"n_layers": 2, "units": 128, "activation": "relu", "norm": "none", "dropout": 0.0}, True),
        ({"n_layers": 2, "units": 128, "activation": "relu", "norm": "none", "dropout": 0.1}, True),
        ({"n_layers": 3, "units": 64, "activation": "gelu", "norm": "batch", "dropout": 0.2}, True),
        ({"n_layers": 1, "units": 256, "activation": "tanh", "norm": "layer", "dropout": 0.3}, True),
        ({"n_layers": 2, "units": 96, "activation": "silu", "norm": "batch", "dropout": 0.1}, "reduce-overhead"),
    ]
    out: dict = {"trials": []}
    try:
        for i, (arch, mode) in enumerate(trials):
            need = max(25.0, 1.5 * LAST_COMPILED_TRIAL_S[0])
            if remaining() < need:
                skip(f"[compile] stopped after {i} trials: {remaining():.0f}s of the budget left, a trial may take "
                     f"{need:.0f}s")
                break
            before = (counters["stats"]["unique_graphs"], sum(counters["graph_break"].values()), cudagraph_skips())
            reports: list = []
            start = time.perf_counter()
            settings = TrainSettings(max_epochs=3, device=dev, compile=mode)
            train_trial({**PARAMS, **arch}, data, settings, collect(reports))
            sync(dev)
            row = {"arch": arch, "mode": mode, "seconds": round(time.perf_counter() - start, 2),
                   "graphs": counters["stats"]["unique_graphs"] - before[0],
                   "graph_breaks": sum(counters["graph_break"].values()) - before[1],
                   "cudagraph_skips": cudagraph_skips() - before[2],
                   "val_loss": reports[-1][0]["val_loss"]}
            LAST_COMPILED_TRIAL_S[0] = row["seconds"]
            out["trials"].append(row)
            info(f"compiled trial {i}: {row}")
            if mode == "reduce-overhead" and row["cudagraph_skips"]:
                warn(f"compiled trial {i} ({arch}, reduce-overhead): {row['cudagraph_skips']} graph(s) ran without CUDA "
                     "graphs (TORCH_LOGS=cudagraphs says why)")
        if remaining() >= max(25.0, 1.5 * LAST_COMPILED_TRIAL_S[0]):
            out["reduce_overhead_large_validation"] = _large_validation(data, dev)
        else:
            skip("[compile] reduce-overhead with a validation split larger than one evaluation batch (budget)")
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
    hits = [m for m in messages if "hit config." in m or "recompile_limit" in m or "cache_size_limit" in m]
    fallbacks = [m for m in messages if "torch.compile failed" in m]
    out["recompile_limit_hits"], out["compile_fallbacks"] = hits, fallbacks
    out["warnings_logged"] = messages[:20]
    info(f"{len(out['trials'])} compiled trials in one process: {len(hits)} recompile-limit hits, "
         f"{len(fallbacks)} fallbacks to eager")
    if fallbacks:
        fail(f"torch.compile fell back to eager on CUDA: {fallbacks[0][:200]}")
    if hits:
        fail(f"Dynamo hit its recompile limit within {len(out['trials'])} compiled trials: {hits[0][:200]}")
    if len(out["trials"]) < 4:
        warn(f"only {len(out['trials'])} compiled trials fitted in the budget (4+ wanted)")
    return out


def _large_validation(data, dev: str) -> dict:
    """compile="reduce-overhead" with more validation rows than two evaluation batches: CUDA graph outputs are
    overwritten by the graph's next replay, so validation that keeps several batches' outputs must copy them."""
    eval_batch = getattr(T, "EVAL_BATCH", 8192)
    copies = math.ceil(2.5 * eval_batch / len(data.x_val))
    big = dataclasses.replace(data, x_val=np.tile(data.x_val, (copies, 1)), y_val=np.tile(data.y_val, copies))
    out = {"validation_rows": len(big.x_val), "eval_batch": eval_batch}
    eager: list = []
    train_trial(PARAMS, big, TrainSettings(max_epochs=2, device=dev), collect(eager))
    try:
        graphs: list = []
        skips = cudagraph_skips()
        train_trial(PARAMS, big, TrainSettings(max_epochs=2, device=dev, compile="reduce-overhead"), collect(graphs))
        out["cudagraph_skips"] = cudagraph_skips() - skips
    except Exception as exc:  # noqa: BLE001
        out["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        fail(f"compile='reduce-overhead' with {len(big.x_val)} validation rows (> 2 x EVAL_BATCH) crashed: {out['error']}")
        return out
    a, b = eager[-1][0]["val_loss"], graphs[-1][0]["val_loss"]
    out.update({"eager_val_loss": a, "graphs_val_loss": b, "eager_val_accuracy": eager[-1][0]["val_accuracy"],
                "graphs_val_accuracy": graphs[-1][0]["val_accuracy"]})
    info(f"reduce-overhead with {len(big.x_val)} validation rows: val_loss {b:.6f} (eager {a:.6f})")
    if abs(a - b) / max(abs(a), 1e-12) > 1e-3:
        fail(f"compile='reduce-overhead' validation over {len(big.x_val)} rows is wrong: val_loss {b!r} vs eager {a!r} "
             "(CUDA graph outputs overwritten between evaluation batches?)")
    return out


# ------------------------------------------------------------------------------------------------ summary


def summary() -> dict:
    rows = dict(SUMMARY_ROWS)

    def sps(label):
        return rows.get(label, {}).get("samples_per_s")

    def ratio(a, b):
        return round(sps(a) / sps(b), 3) if sps(a) and sps(b) else None

    gpu_labels = [label for label in rows if label.startswith("cuda")]
    best_gpu = max(gpu_labels, key=sps) if gpu_labels else None
    ratios = {
        "amp_bf16/fp32": ratio("cuda bf16 amp", "cuda fp32"),
        "tf32/fp32": ratio("cuda fp32+tf32 (prepare_device)", "cuda fp32"),
        "graphs(reduce-overhead)/fp32": ratio("cuda reduce-overhead (CUDA graphs)", "cuda fp32"),
        "compile/fp32": ratio("cuda compile=True", "cuda fp32"),
        "streamed/resident (cuda)": ratio("cuda streamed fp32", "cuda fp32"),
        "gpu fp32/cpu": ratio("cuda fp32", "cpu (1 thread)"),
        "best gpu/cpu": ratio(best_gpu, "cpu (1 thread)") if best_gpu else None,
        "streamed/resident (cpu)": ratio("cpu streamed (1 thread)", "cpu (1 thread)"),
    }
    print("\n== summary: train_trial on digits (2x128 ReLU MLP, Adam, batch 64; training + per-epoch validation)")
    print(f"  {'run':36s} {'samples/s':>10s} {'ms/epoch':>9s} {'setup/compile s':>16s} {'vs cuda fp32':>13s}")
    for label, row in rows.items():
        vs = ratio(label, "cuda fp32")
        print(f"  {label:36s} {row['samples_per_s']:>10,} {row['ms_per_epoch']:>9.2f} "
              f"{row['setup_or_compile_s']:>16.3f} {(f'x{vs:.2f}' if vs else '-'):>13s}")
    print("  ratios: " + ", ".join(f"{k} {('x%.2f' % v) if v is not None else 'n/a'}" for k, v in ratios.items()))
    if not HAS_CUDA:
        print("  (no CUDA device: the GPU rows and ratios are n/a)")
    if best_gpu:
        print(f"  best GPU run: {best_gpu}")
    out = {"rows": rows, "ratios": ratios, "best_gpu_run": best_gpu}
    amp = ratios["amp_bf16/fp32"]
    if amp is not None and amp < 0.95:
        warn(f"bf16 AMP makes this small MLP slower: x{amp:.2f} of fp32")
    gpu = ratios["gpu fp32/cpu"]
    if gpu is not None and gpu < 1:
        warn(f"the GPU trains the digits MLP slower than one CPU thread (x{gpu:.2f}; launch-bound)")
    return out


def finish() -> int:
    try:
        RESULT["summary"] = summary()
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc()
        fail(f"summary: raised {type(exc).__name__}: {exc}")
    RESULT["modules_ray_mlflow_optuna_at_end"] = _heavy_modules()
    if RESULT["modules_ray_mlflow_optuna_at_end"]:
        fail(f"the checks loaded {RESULT['modules_ray_mlflow_optuna_at_end']} (trainables must stay free of them)")
    if HAS_CUDA:
        RESULT["max_memory_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        print(f"\npeak CUDA memory allocated by this process: {RESULT['max_memory_allocated_mib']} MiB")
    RESULT["elapsed_s"] = round(time.monotonic() - T0, 1)
    RESULT["cuda"] = HAS_CUDA
    status = "FAILED" if RESULT["failures"] else "passed"
    print(f"\n== gpu_check {status}: {len(RESULT['failures'])} failure(s), {len(RESULT['warnings'])} warning(s), "
          f"{len(RESULT['skipped'])} skipped, {RESULT['elapsed_s']}s (budget {BUDGET_S:.0f}s)")
    for msg in RESULT["failures"]:
        print(f"  FAIL: {msg}")
    out_dir = os.environ.get("OUT")
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, "gpu_check.json")
        with open(path, "w") as f:
            json.dump(RESULT, f, indent=1, default=str)
        print(f"summary written to {path}", flush=True)
    sys.stdout.flush()
    return 1 if RESULT["failures"] else 0


def _out_of_time() -> None:
    """At the hard limit (a compile can take longer than its time box): say where it stopped."""
    fail(f"hard time limit {HARD_LIMIT_S:.0f}s reached in section {CURRENT['section']}; stopping with partial results")


def main() -> int:
    timer = deadline.arm(HARD_LIMIT_S, T0, _out_of_time, finish)
    data = split_dataset("sklearn:digits", "auto", 0.15, 0.15, 0).trial_data()
    print(f"gpu_check: trainables from {os.path.dirname(trainables.__file__)}; digits: {len(data.x_train)} training, "
          f"{len(data.x_val)} validation rows; budget {BUDGET_S:.0f}s{' (quick)' if QUICK else ''}", flush=True)
    run_section("versions", versions)
    ds = run_section("device", device_section, data)
    dev = ds.get("device_for_checks") if isinstance(ds, dict) else None
    if HAS_CUDA and not dev:
        dev = "cuda:0"
    if not HAS_CUDA:
        print(f"\nNo CUDA device: every CUDA part prints '{NO_CUDA}'; the CPU parts run as a smoke test.", flush=True)
    run_section("throughput", throughput, data, dev)
    run_section("breakdown", breakdown, data, dev)
    run_section("resume", resume, data, dev)
    run_section("metrics", metrics_check, data, dev)
    run_section("determinism", determinism, data, dev)
    run_section("throughput_compiled", throughput_compiled, data, dev)
    run_section("compile", compile_check, data, dev)
    CURRENT["section"] = "summary"
    code = finish()
    timer.cancel()
    return code


if __name__ == "__main__":
    sys.exit(main())
