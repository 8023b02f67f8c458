"""``python -m benchmarks [--quick]``: run the four figures, print a table, write it as JSON.

``--parts quality`` (never part of the default run: hours at full budget) measures search quality instead: every
bundled config's default search and ``hps evaluate`` on several split seeds against scikit-learn anchors on the same
splits (benchmarks/quality.py); it also writes its Markdown table beside the JSON file.

Full budget (about 10 minutes on 2 CPU cores): throughput 5 x 20 epochs of each loop; overhead 3 x (24 trials x 30
epochs, FIFO, 2 at a time); ASHA vs FIFO 3 x 32 trials x up to 30 epochs; packed trials 3 x (1, 4, 8, 16 trials x 3
epochs, packed and one after another). ``--quick`` shrinks everything to
seconds (it checks that the benchmark runs, its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks import quality

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "latest.json"
PARTS = ("throughput", "overhead", "asha", "packed")  # the default run
# Only when named: quality takes hours at its full budget; pack_search eight full searches per repetition.
ALL_PARTS = (*PARTS, "pack_search", "quality")
PACK_SEARCH_FIGURES = ("pack_space", "overhead_packed", "pack_long", "pack_default")  # what pack_search writes


@dataclass(frozen=True)
class Budget:
    reps: int = 3
    throughput_reps: int = 5  # cheap, and the noisiest figure
    throughput_epochs: int = 20
    overhead_trials: int = 24
    overhead_epochs: int = 30  # ~1.5 s per digits trial on one core
    asha_trials: int = 32
    asha_epochs: int = 30  # configs/digits.yaml's ASHA: grace 4, factor 3 → rungs at 4 and 12 epochs
    overhead_warmups: int = 1  # untimed pairs first, so neither side pays for a cold file cache
    packed_epochs: int = 3  # per trial, for each pack size (1, 4, 8, 16 trials): ~30 s on one core
    pack: int = 8  # packed searches: trials per pack server, two servers (the 2-CPU setting)
    pack_trials: int = 32  # the short packable search (issue 27, figure 1)
    pack_epochs: int = 20
    pack_long_trials: int = 128  # the long one (figure 2): over 3 minutes unpacked on 2 CPUs
    pack_long_epochs: int = 120
    pack_default_trials: int = 40  # configs/digits.yaml's own budget (figure 3)
    concurrent: int = 2  # trials at a time in the overhead and ASHA searches (the 2-CPU setting)


# Checks that every part runs and writes its figure, in as little as each part allows: one epoch where the figure
# needs no more, two where ASHA needs a rung before the last epoch, and one trial at a time (each trial worker
# started costs ~3 CPU-seconds of imports; the quick numbers mean nothing anyway).
QUICK = Budget(reps=1, throughput_reps=1, throughput_epochs=1, overhead_trials=2, overhead_epochs=1,
               asha_trials=2, asha_epochs=2, overhead_warmups=0, packed_epochs=1, pack=2, pack_trials=4,
               pack_epochs=1, pack_long_trials=4, pack_long_epochs=2, pack_default_trials=4, concurrent=1)

# The targets: ratio direction and threshold.
TARGETS = {
    "throughput": ("ratio", ">=", 1.4),
    "overhead": ("ratio", "<=", 1.25),
    "asha_epochs": ("epochs_ratio", "<=", 0.40),
    "asha_accuracy": ("accuracy_gap_pp", "<=", 0.5),
    # Issue 27. Ratios are unpacked wall / packed wall (> 1: packing is faster), but for the script comparison.
    "pack_space": ("ratio", ">=", 1.25),  # figure 1: packed <= 0.8x the unpacked wall time
    "overhead_packed": ("ratio", "<=", 1.0),  # figure 1 again: packed `hps run` no slower than the script
    "pack_long": ("ratio", ">=", 1.8),  # figure 2: >= 1.8x the trials per hour
    "pack_default": ("ratio", ">=", 0.95),  # figure 3: the default config never slower than 0.95x
}


def run(parts: tuple[str, ...], budget: Budget, config: str, out: Path, workdir: Path,
        quality_settings: quality.Settings | None = None, command: str = "",
        quality_reuse: dict | None = None) -> dict:
    from benchmarks import asha, machine, overhead, pack_search, packed, throughput  # imported up front: one version

    results: dict = {"machine": machine.describe(), "budget": asdict(budget), "config": config, "command": command}
    started = time.perf_counter()
    if "throughput" in parts:
        import torch

        from search.config.dataset import split_from_config
        from search.config.schema import load_config

        data = split_from_config(load_config(config)).trial_data()
        results["throughput"] = throughput.measure(data, budget.throughput_epochs, budget.throughput_reps)
        if machine.gpu_name() != "none":
            results["throughput_gpu"] = throughput.measure(data, budget.throughput_epochs, budget.throughput_reps,
                                                          torch.device("cuda", 0))
        _save(results, out)  # a later part that fails keeps what is done
    # Both searches: ``budget.concurrent`` trials at a time (2: the 2-CPU setting), one CPU each.
    common = [f"search.max_concurrent={budget.concurrent}", "resources.cpus_per_trial=1"]
    if "overhead" in parts:

        # FIFO ignores the grace period; 1 keeps any epoch budget valid.
        overrides = [*common, "scheduler.type=fifo", f"search.num_samples={budget.overhead_trials}",
                     f"scheduler.max_epochs={budget.overhead_epochs}", "scheduler.grace_period=1"]
        results["overhead"] = overhead.measure(config, overrides, budget.reps, workdir, budget.overhead_warmups)
        _save(results, out)
    if "asha" in parts:

        # No models kept (the config's top-5 evaluation would then be refused: top 1), no review plots: this figure
        # counts epochs and accuracy.
        overrides = [*common, "search.metric=val_accuracy", f"search.num_samples={budget.asha_trials}",
                     f"scheduler.max_epochs={budget.asha_epochs}", "tracking.log_models=none", "evaluate.top_k=1",
                     "tracking.review_plots=false"]
        if budget.asha_epochs < 12:  # the quick budget: keep a rung inside the few epochs there are
            overrides.append("scheduler.grace_period=1")
        results["asha"] = asha.measure(config, overrides, budget.reps, workdir)
        _save(results, out)
    if "packed" in parts:
        from search.config.dataset import split_from_config
        from search.config.schema import load_config

        data = split_from_config(load_config(config)).trial_data()
        results["packed"] = packed.measure(data, budget.packed_epochs, budget.reps)
        _save(results, out)
    if "pack_search" in parts:
        space = pack_search.packing_config(config, workdir)
        short = [f"search.num_samples={budget.pack_trials}", f"scheduler.max_epochs={budget.pack_epochs}"]
        packable = "packable space (128 units, random, FIFO)"
        short_label = f"{packable}, {budget.pack_trials} trials x {budget.pack_epochs} epochs"
        results["pack_space"] = pack_search.measure(space, short, budget.pack, 2, budget.reps, workdir, "space")
        results["pack_space"]["label"] = short_label
        _save(results, out)
        results["overhead_packed"] = overhead.measure(
            space, [*common, *short], budget.reps, workdir, budget.overhead_warmups,
            hps_only=[f"resources.pack={budget.pack}", f"search.max_concurrent={2 * budget.pack}"])
        results["overhead_packed"]["label"] = f"{short_label}, packed ({budget.pack} a server, 2 servers)"
        _save(results, out)
        long = [f"search.num_samples={budget.pack_long_trials}", f"scheduler.max_epochs={budget.pack_long_epochs}"]
        results["pack_long"] = pack_search.measure(space, long, budget.pack, 2, budget.reps, workdir, "long")
        results["pack_long"]["label"] = f"{packable}, {budget.pack_long_trials} trials x {budget.pack_long_epochs} epochs"
        _save(results, out)
        results["pack_default"] = pack_search.measure(config, [f"search.num_samples={budget.pack_default_trials}"],
                                                      budget.pack, 2, budget.reps, workdir, "default")
        results["pack_default"]["label"] = f"{Path(config).name} as it is, {budget.pack_default_trials} trials"
        _save(results, out)
    if "quality" in parts:
        started_quality = time.perf_counter()

        def save_quality(partial: dict) -> None:
            results["quality"] = partial
            results["quality"]["wall_s"] = time.perf_counter() - started_quality
            _save(results, out)

        results["quality"] = quality.measure(quality_settings or quality.Settings(), workdir, save_quality,
                                             quality_reuse)
        results["quality"]["wall_s"] = time.perf_counter() - started_quality
    results["machine"]["load_after"] = machine.load()
    results["total_s"] = time.perf_counter() - started
    results["targets"] = _check_targets(results)
    _save(results, out)
    return results


def _save(results: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))


def _check_targets(results: dict) -> dict:
    checked = {}
    for name, (key, op, threshold) in TARGETS.items():
        section = results.get(name, results.get(name.split("_")[0]))  # a figure of its own, or a part's
        if section is not None:
            value = section[key]
            met = {">=": value >= threshold, ">": value > threshold, "<=": value <= threshold}[op]
            checked[name] = {"value": value, "target": f"{op} {threshold}", "met": met}
    return checked


def table(results: dict) -> str:
    """The results as a Markdown table (the README shows the latest one)."""
    m, b = results["machine"], results["budget"]
    rows = ["| figure | this service | baseline | ratio | target |", "|---|---|---|---|---|"]
    mark = {True: "met", False: "short"}
    targets = results.get("targets", {})

    def target(name: str) -> str:
        t = targets.get(name)
        return f"{t['target']} ({mark[t['met']]})" if t else "-"

    if not any(part in results for part in (*PARTS, *PACK_SEARCH_FIGURES)):  # quality only: its own table says it all
        return quality.table(results) if "quality" in results else ""
    def row(figure: str, ours: str, baseline: str, ratio: str, goal: str = "-") -> None:
        rows.append(f"| {figure} | {ours} | {baseline} | {ratio} | {goal} |")

    for key, device in (("throughput", "digits, batch 64, CPU 1 thread"), ("throughput_gpu", "GPU")):
        if key in results:
            t = results[key]
            row(f"trainable throughput, {device} (samples/s)", f"{t['ours_samples_per_s']:,.0f}",
                f"{t['course_samples_per_s']:,.0f} (course-notes DataLoader loop)", f"{t['ratio']:.2f}x",
                target(key) if key == "throughput" else "-")
    concurrent = b.get("concurrent", 2)  # results written before the field existed ran 2 at a time
    for key in ("overhead", "overhead_packed"):
        if key in results:
            # Results written before packing existed have no pack size: only the packed figure names one.
            how = f"packed ({b['pack']} a worker, 2 workers)" if key == "overhead_packed" else f"{concurrent} at a time"
            o = results[key]
            # Results of issue 27's runs name what they measured; older ones ran the overhead figure's search.
            what = o.get("label", f"FIFO, {b['overhead_trials']} trials x {b['overhead_epochs']} epochs, {how}")
            row(f"`hps run` wall time, {what} (s)",
                f"{o['hps_wall_s']:.1f}",
                f"{o['optuna_wall_s']:.1f} (Optuna `n_jobs={concurrent}`, same configurations)",
                f"{o['ratio']:.2f}x", target(key))
    if "asha" in results:
        a = results["asha"]
        row(f"epochs trained, {b['asha_trials']} trials x up to {b['asha_epochs']}", f"{a['asha_epochs']:.0f} (ASHA)",
            f"{a['fifo_epochs']:.0f} (FIFO)", f"{a['epochs_ratio']:.2f}x", target("asha_epochs"))
        row("best val accuracy", f"{a['asha_best_val_accuracy']:.4f} (ASHA)", f"{a['fifo_best_val_accuracy']:.4f} (FIFO)",
            f"{a['accuracy_gap_pp']:+.2f} pp gap", target("asha_accuracy"))
    for key, what in (("pack_space", "same trials: packable space, random search, FIFO"),
                      ("pack_long", "same trials, a long search"),
                      ("pack_default", "the config as it is, packing on vs off")):
        if key in results:
            r = results[key]
            label = r.get("label", f"{b['pack_trials']} trials, {what}")  # older results: no label
            row(f"`hps run` wall time, {label} (s)",
                f"{r['packed_wall_s']:.1f} (pack {r['pack']} x {r['servers']} servers)",
                f"{r['unpacked_wall_s']:.1f} (unpacked, {r['servers']} at a time)", f"{r['ratio']:.2f}x faster", target(key))
    if "packed" in results:
        p = results["packed"]
        for member_row in p["rows"]:
            row(f"{member_row['members']} packed trials, epochs/s (CPU {p['threads']} thread)",
                f"{member_row['packed_epochs_per_s']:.1f}", f"{member_row['sequential_epochs_per_s']:.1f} (one after another)",
                f"{member_row['ratio']:.2f}x")
    head = (f"Machine: {m['cpu']} ({m['cpus']} CPUs), GPU: {m['gpu']}; torch {m['torch']}, ray {m['ray']}, "
            f"optuna {m['optuna']}. Load average (1/5/15 min) before {m['load_before']}, after {m.get('load_after')}. "
            f"Median of {b['reps']} repetitions ({b['throughput_reps']} for throughput); total {results.get('total_s', 0):.0f} s.")
    text = head + "\n\n" + "\n".join(rows)
    return text + "\n\n" + quality.table(results) if "quality" in results else text


def _variant(parser: argparse.ArgumentParser, text: str) -> tuple[str, tuple[str, ...]]:
    """``top5=--top-k 5`` → ("top5", ("--top-k", "5"))."""
    name, sep, args = text.partition("=")
    if not sep or not name.strip() or not args.strip():
        parser.error(f"--variant {text!r}: expected NAME=ARGS, e.g. 'top5=--top-k 5'")
    return name.strip(), tuple(shlex.split(args))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny budget: checks that the benchmark runs")
    parser.add_argument("--reps", type=int, help="repetitions per figure (default 3; 1 with --quick)")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated subset of {','.join(ALL_PARTS)} (default: {','.join(PARTS)})")
    parser.add_argument("--config", default=str(ROOT / "configs" / "digits.yaml"))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    q = parser.add_argument_group("quality part")
    q.add_argument("--configs", default=",".join(quality.DEFAULT_CONFIGS),
                   help="configs/NAME.yaml names or paths (default: every bundled config but mnist)")
    q.add_argument("--seeds", default="1,2,3,4,5", help="split seeds (search.seed is set to the same)")
    q.add_argument("--sampler-compare", action="store_true", help="also search with search.sampler=random, same budget")
    q.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra override for every hps run")
    q.add_argument("--variant", action="append", default=[], metavar="NAME=ARGS",
                   help="also test each search's model chosen another way: `hps evaluate --force ARGS`, "
                        "e.g. 'top5=--top-k 5'")
    q.add_argument("--reuse", action="append", type=Path, default=[], metavar="JSON",
                   help="earlier quality results: their finished searches with the same overrides are not run again")
    q.add_argument("--trials", type=int,
                   help="search.num_samples of every search (default: each config's; 3 with --quick)")
    q.add_argument("--epochs", type=int, help="scheduler.max_epochs of every search, grace period 1 (3 with --quick)")
    args = parser.parse_args(argv)
    budget = QUICK if args.quick else Budget()
    if args.reps:
        budget = Budget(**{**asdict(budget), "reps": args.reps, "throughput_reps": max(args.reps, budget.throughput_reps)})
    parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
    unknown = set(parts) - set(ALL_PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; choose from {', '.join(ALL_PARTS)}")
    settings = quality.Settings(
        configs=tuple(c.strip() for c in args.configs.split(",") if c.strip()),
        seeds=tuple(int(s) for s in args.seeds.split(",") if s.strip()),
        sampler_compare=args.sampler_compare, overrides=tuple(args.set),
        variants=tuple(_variant(parser, v) for v in args.variant),
        trials=args.trials or (3 if args.quick else None), epochs=args.epochs or (3 if args.quick else None),
    )
    try:
        reuse = quality.earlier_searches(args.reuse, settings)
    except (OSError, ValueError, KeyError) as exc:
        parser.error(f"--reuse: {exc}")
    command = shlex.join(["python", "-m", "benchmarks", *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    with tempfile.TemporaryDirectory(prefix="hps-bench-") as workdir:
        results = run(parts, budget, args.config, args.out, Path(workdir), settings, command, reuse)
    print(table(results))
    print(f"\nwrote {args.out}")
    if "quality" in results:
        print(f"wrote {quality.write(results, args.out)}")
    return 0
