"""Search quality: each bundled config's default search, tested by ``hps evaluate`` on K split seeds, against
scikit-learn anchors trained and tested on the same rows; optionally TPE against random search at equal budget.

For every config and split seed S:

- ``hps run CONFIG --set data.split.seed=S --set search.seed=S`` (the console script, a fresh process with its own
  sqlite tracking store and storage folder), then ``hps evaluate`` as the config says (``evaluate.top_k``/``refit``);
  the test metric is read back from the search's parent run (``test_accuracy``, or ``test_mae`` for regression).
- The split is rebuilt in this process from the same config and overrides (its fingerprint must equal the one the
  search recorded) and three anchors are fitted on its training + validation rows (all development rows), with the
  project's own preprocessing fitted again on them (imputation, one-hot, standardized columns; a regression target
  standardized too, predictions mapped back): ``MLPClassifier()``/``MLPRegressor()`` defaults (random_state=S),
  ``HistGradientBoostingClassifier()``/``Regressor()`` defaults, ``LogisticRegression(max_iter=1000)``/``Ridge()``.
  They are scored on the same test rows with the metric ``hps evaluate`` reports.
- With ``sampler_compare``: the same search with ``search.sampler=random`` (same seed, same budget), evaluated the
  same way; its best validation value and test metric beside TPE's.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.overhead import hps_command

ROOT = Path(__file__).resolve().parent.parent
# mnist is left out by default: 70,000 rows × 24 trials is hours per seed on 2 CPU cores, and its files are not
# in the repository (configs/mnist.yaml says where to put them).
DEFAULT_CONFIGS = ("auto_mpg", "breast_cancer", "diabetes", "digits", "wine")
ANCHORS = ("mlp", "hist_gb", "linear")
ANCHOR_LABELS = {
    "classification": {"mlp": "MLPClassifier()", "hist_gb": "HistGradientBoostingClassifier()",
                       "linear": "LogisticRegression(max_iter=1000)"},
    "regression": {"mlp": "MLPRegressor()", "hist_gb": "HistGradientBoostingRegressor()", "linear": "Ridge()"},
}


@dataclass(frozen=True)
class Settings:
    """What one quality run covers. ``trials``/``epochs`` shrink every search (smoke tests); ``overrides`` are
    extra ``--set KEY=VALUE`` items for every hps run (and the anchors' split), e.g. a candidate default."""

    configs: tuple[str, ...] = DEFAULT_CONFIGS
    seeds: tuple[int, ...] = (1, 2, 3, 4, 5)
    sampler_compare: bool = False
    overrides: tuple[str, ...] = ()
    trials: int | None = None
    epochs: int | None = None
    # Other ways to choose the tested model, each a forced `hps evaluate NAME --force ARGS` of the same search after
    # the configured one: {"top5": ["--top-k", "5"]}. A study of selection rules, not a default of the benchmark.
    variants: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def budget_overrides(self) -> list[str]:
        sets = [] if self.trials is None else [f"search.num_samples={self.trials}"]
        if self.epochs is not None:  # a grace period longer than the epochs there are would be refused
            sets += [f"scheduler.max_epochs={self.epochs}", "scheduler.grace_period=1"]
        return sets


def config_path(name: str) -> Path:
    """``digits`` → configs/digits.yaml; a path is taken as it is."""
    path = Path(name)
    return path if path.suffix in (".yaml", ".yml") else ROOT / "configs" / f"{name}.yaml"


@dataclass
class _Search:
    """One ``hps run`` + ``hps evaluate`` of a config on one split seed."""

    config: Path
    seed: int
    overrides: list[str]
    workdir: Path
    label: str
    variants: dict[str, list[str]] = field(default_factory=dict)
    record: dict = field(default_factory=dict)

    def run(self) -> dict:
        name = f"quality-{self.config.stem}-s{self.seed}-{self.label}".replace("_", "-")
        uri = f"sqlite:///{self.workdir / f'{name}.db'}"
        sets = [arg for item in self.overrides for arg in ("--set", item)]
        started = time.perf_counter()
        _hps(["run", str(self.config), "--name", name, *sets, "--tracking-uri", uri,
              "--storage", str(self.workdir / "storage"), "--overwrite"], self.workdir / f"{name}-run.log")
        searched = time.perf_counter()
        _hps(["evaluate", name, "--tracking-uri", uri], self.workdir / f"{name}-evaluate.log")
        self.record = {"run_s": searched - started, "evaluate_s": time.perf_counter() - searched,
                       **_recorded(uri, name)}
        for variant, args in self.variants.items():  # the same search tested again, chosen another way
            _hps(["evaluate", name, "--tracking-uri", uri, "--force", *args],
                 self.workdir / f"{name}-evaluate-{variant}.log")
            again = _recorded(uri, name)
            self.record.setdefault("variants", {})[variant] = {"args": args, "test": again["test"],
                                                               "evaluated": again["evaluated"]}
        return self.record


def _hps(args: list[str], log: Path) -> None:
    # This checkout's code first, whatever the console script's install points at: one code version throughout.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with open(log, "w") as out:
        proc = subprocess.run([*hps_command(), *args], stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    if proc.returncode != 0:
        tail = log.read_text().strip().splitlines()[-3:]
        raise RuntimeError(f"hps {args[0]} exited with {proc.returncode}: {' | '.join(tail)}")


def _recorded(uri: str, name: str) -> dict:
    """What the search and its evaluation recorded on the parent run: test metrics, best validation value, how the
    tested model was chosen, the split fingerprint."""
    from search.records.connection import connect
    from search.records.leaderboard import find_search_run, leaderboard

    client = connect(uri, existing=True)
    parent = find_search_run(client, name)
    metrics, tags = parent.data.metrics, parent.data.tags
    metric = tags.get("hps.metric", "val_loss")
    board = leaderboard(client, parent)
    best = board[f"best_{metric}"].dropna()
    return {
        "test": {k: float(v) for k, v in metrics.items() if k.startswith("test_")},
        "val_metric": metric,
        "best_val": float(best.iloc[0]) if len(best) else None,  # the leaderboard is sorted best first
        "trials": int(len(board)),
        "epochs_trained": int(board["epochs"].sum()),
        "evaluated": {"top_k": int(tags.get("hps.test_top_k", 1)), "refit": tags.get("hps.test_refit") == "True"},
        "split_fingerprint": tags.get("hps.split_fingerprint"),
    }


def anchors(config: Path, overrides: list[str], seed: int) -> dict:
    """The anchors fitted on the development rows (train + validation) of the split ``config`` + ``overrides``
    describe, scored on its test rows: ``{"scores": {anchor: value}, "metric": ..., ...}``."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.neural_network import MLPClassifier, MLPRegressor
    from threadpoolctl import threadpool_limits

    from search.config.dataset import split_from_config
    from search.config.schema import load_config
    from trainables.data import Preprocessor

    with contextlib.chdir(ROOT):  # relative csv sources resolve as they do for `hps run` (run from the repo root)
        split = split_from_config(load_config(config, overrides))
    dev = split.refit_data()  # train + validation rows, preprocessing fitted again on them: what a refit trains on
    prep = Preprocessor.from_dict(dev.preprocessor)
    rows, target = split.test_rows()
    x_test = prep.transform_features(rows)
    regression = split.task == "regression"
    models = {
        "mlp": MLPRegressor(random_state=seed) if regression else MLPClassifier(random_state=seed),
        "hist_gb": (HistGradientBoostingRegressor(random_state=seed) if regression
                    else HistGradientBoostingClassifier(random_state=seed)),
        "linear": Ridge() if regression else LogisticRegression(max_iter=1000),
    }
    scores, seconds = {}, {}
    for key, model in models.items():
        started = time.perf_counter()
        # One thread: a search's trials get one CPU each, and OpenMP threads on a busy 2-core machine spin-wait (the
        # digits gradient boosting took minutes instead of seconds beside a running search).
        with warnings.catch_warnings(), threadpool_limits(1):
            warnings.simplefilter("ignore", ConvergenceWarning)  # the defaults stop at max_iter: that is the anchor
            model.fit(dev.x_train, dev.y_train)
            predicted = model.predict(x_test)
        if regression:  # the target was standardized for fitting: errors in the target's own units
            scores[key] = float(np.mean(np.abs(np.asarray(prep.decode_target(predicted)) - target.to_numpy(float))))
        else:
            scores[key] = float(np.mean(predicted == prep.transform_target(target)))
        seconds[key] = time.perf_counter() - started
    return {"scores": scores, "seconds": seconds, "metric": "test_mae" if regression else "test_accuracy",
            "task": split.task, "n_dev": len(dev.x_train), "n_test": len(rows), "split_fingerprint": split.fingerprint}


def earlier_searches(paths: list[Path], settings: Settings) -> dict[tuple[str, int, str], dict]:
    """Finished searches recorded by earlier quality runs that ran exactly the searches ``settings`` asks for (same
    overrides and budget), keyed by (config stem, seed, label): a run can add the random-search half to a recorded
    TPE run, or go on after a stop, without searching again. Each reused record names the file it came from."""
    reusable: dict[tuple[str, int, str], dict] = {}
    for path in paths:
        earlier = json.loads(path.read_text())["quality"]
        same = (list(earlier["settings"]["overrides"]) == list(settings.overrides)
                and list(earlier["settings"]["budget_overrides"]) == settings.budget_overrides())
        if not same:
            raise ValueError(f"{path}: its searches used other overrides or budget than this run's")
        for stem, dataset in earlier["datasets"].items():
            for seed, record in dataset["seeds"].items():
                for label, search in record.items():
                    if label != "anchors" and "test" in search:
                        reusable[(stem, int(seed), label)] = {**search, "reused_from": str(path)}
    return reusable


def measure(settings: Settings, workdir: Path, save: Callable[[dict], None] | None = None,
            reuse: dict[tuple[str, int, str], dict] | None = None) -> dict:
    """Every config × seed (× sampler): the per-seed records and a per-dataset summary. ``save`` is called with the
    partial result after every seed, so a long run that stops keeps what it did; ``reuse`` (from
    :func:`earlier_searches`) holds searches not to run again."""
    out: dict = {"settings": {**asdict(settings), "budget_overrides": settings.budget_overrides()}, "datasets": {}}
    for name in settings.configs:
        config = config_path(name)
        dataset: dict = {"config": str(config.relative_to(ROOT) if config.is_relative_to(ROOT) else config),
                         "seeds": {}}
        out["datasets"][config.stem] = dataset
        for seed in settings.seeds:
            dataset["seeds"][str(seed)] = _one_seed(config, seed, settings, workdir, reuse or {})
            dataset["summary"] = summarize(dataset["seeds"])
            if save:
                save(out)
    return out


def _one_seed(config: Path, seed: int, settings: Settings, workdir: Path,
              reuse: dict[tuple[str, int, str], dict]) -> dict:
    overrides = [f"data.split.seed={seed}", f"search.seed={seed}", *settings.budget_overrides(), *settings.overrides]
    record: dict = {}
    samplers = {"hps": overrides, **({"hps_random": [*overrides, "search.sampler=random"]}
                                     if settings.sampler_compare else {})}
    for label, sets in samplers.items():
        wanted = {name for name, _ in settings.variants} if label == "hps" else set()
        if (config.stem, seed, label) in reuse and wanted <= set(reuse[(config.stem, seed, label)].get("variants", {})):
            record[label] = reuse[(config.stem, seed, label)]
            continue
        try:
            variants = {name: list(args) for name, args in settings.variants} if label == "hps" else {}
            record[label] = _Search(config, seed, sets, workdir, label, variants).run()
        except RuntimeError as exc:  # one failed search is a gap in the table, not the end of a long run
            record[label] = {"error": str(exc)}
    record["anchors"] = anchors(config, overrides, seed)
    for label in samplers:
        searched = record[label].get("split_fingerprint")
        if searched is not None and searched != record["anchors"]["split_fingerprint"]:
            raise RuntimeError(f"{config.stem} seed {seed}: the anchors' split is not the one {label} searched")
    return record


def _higher_is_better(metric: str) -> bool:
    return metric == "test_accuracy"


def _paired(ours: list[float], theirs: list[float], higher: bool) -> dict:
    diffs = [(a - b) if higher else (b - a) for a, b in zip(ours, theirs)]  # > 0: ours is better
    return {"wins": sum(d > 0 for d in diffs), "ties": sum(d == 0 for d in diffs), "n": len(diffs),
            "mean_diff": statistics.fmean(a - b for a, b in zip(ours, theirs))}


def _spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def summarize(seeds: dict) -> dict:
    """Mean ± sd per method, and hps's paired wins against each anchor (and TPE's against random), over the seeds
    whose searches finished."""
    done = {s: r for s, r in seeds.items() if "test" in r.get("hps", {})}
    if not done:
        return {}
    first = next(iter(done.values()))["anchors"]
    metric, higher = first["metric"], _higher_is_better(first["metric"])
    hps = [r["hps"]["test"][metric] for r in done.values()]
    summary: dict = {"metric": metric, "task": first["task"], "n_dev": first["n_dev"], "n_test": first["n_test"],
                     "evaluated": next(iter(done.values()))["hps"]["evaluated"],
                     "hps": _spread(hps), "anchors": {}, "vs": {}}
    for key in ANCHORS:
        theirs = [r["anchors"]["scores"][key] for r in done.values()]
        summary["anchors"][key] = _spread(theirs)
        summary["vs"][key] = _paired(hps, theirs, higher)
    pairs = [r for r in done.values() if "test" in r.get("hps_random", {})]
    if pairs:
        val_metric = pairs[0]["hps"]["val_metric"]
        tpe_val, rnd_val = [r["hps"]["best_val"] for r in pairs], [r["hps_random"]["best_val"] for r in pairs]
        tpe_test, rnd_test = [r["hps"]["test"][metric] for r in pairs], [r["hps_random"]["test"][metric] for r in pairs]
        val_higher = val_metric.endswith(("accuracy", "auc", "f1", "r2"))
        summary["sampler"] = {
            "val_metric": val_metric,
            "tpe_val": _spread(tpe_val), "random_val": _spread(rnd_val),
            "tpe_vs_random_val": _paired(tpe_val, rnd_val, val_higher),
            "tpe_test": _spread(tpe_test), "random_test": _spread(rnd_test),
            "tpe_vs_random_test": _paired(tpe_test, rnd_test, higher),
        }
    return summary


def variant_summary(seeds: dict) -> dict:
    """Per selection variant: mean ± sd of its test metric and its paired wins against the configured selection
    (the same searches), over the seeds where both were tested."""
    done = [r for r in seeds.values() if "test" in r.get("hps", {}) and r["hps"].get("variants")]
    if not done:
        return {}
    metric = done[0]["anchors"]["metric"]
    base = [r["hps"]["test"][metric] for r in done]
    out = {"metric": metric, "configured": _spread(base), "variants": {}}
    for name in done[0]["hps"]["variants"]:
        theirs = [r["hps"]["variants"][name]["test"][metric] for r in done]
        out["variants"][name] = {"args": done[0]["hps"]["variants"][name]["args"], "test": _spread(theirs),
                                 "vs_configured": _paired(theirs, base, _higher_is_better(metric))}
    return out


def _fmt(spread: dict, digits: int) -> str:
    return f"{spread['mean']:.{digits}f} ± {spread['sd']:.{digits}f}"


def _wins(paired: dict) -> str:
    """``3/5``: better on 3 of 5 seeds; ``3/5 (1 tie)`` when one seed gave the same value."""
    ties = f" ({paired['ties']} tie{'s' if paired['ties'] > 1 else ''})" if paired["ties"] else ""
    return f"{paired['wins']}/{paired['n']}{ties}"


def table(results: dict) -> str:
    """The quality results as Markdown: the machine and command, then one row per dataset."""
    quality, m = results["quality"], results["machine"]
    settings = quality["settings"]
    lines = [
        f"Machine: {m['cpu']} ({m['cpus']} CPUs), GPU: {m['gpu']}; torch {m['torch']}, ray {m['ray']}, optuna "
        f"{m['optuna']}. Load average before {m['load_before']}, after {m.get('load_after')}. "
        f"Split seeds {', '.join(map(str, settings['seeds']))}; wall time {quality.get('wall_s', 0):.0f} s.",
        f"Command: `{results.get('command', 'python -m benchmarks --parts quality')}`",
        "",
        "Mean ± sd over the split seeds of the test metric; the anchors are scikit-learn defaults fitted on the same "
        "split's train + validation rows; \"better\" counts the seeds on which hps's tested model beat the anchor.",
        "",
        "| dataset | metric (test rows) | hps (as `hps evaluate` is configured) | MLP defaults | HistGradientBoosting "
        "| linear | hps better than MLP | than HGB | than linear |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, dataset in quality["datasets"].items():
        s = dataset.get("summary")
        if not s:
            lines.append(f"| {name} | no finished search | | | | | | | |")
            continue
        digits = 4 if _higher_is_better(s["metric"]) else 3
        better = "higher" if _higher_is_better(s["metric"]) else "lower"
        trained = "refit on train + validation" if s["evaluated"]["refit"] else "trained on train rows only"
        how = f"top {s['evaluated']['top_k']}, {trained}"
        lines.append(
            f"| {name} | {s['metric'].removeprefix('test_')} ({better} is better; {s['n_test']} rows) "
            f"| {_fmt(s['hps'], digits)} ({how}) | {_fmt(s['anchors']['mlp'], digits)} "
            f"| {_fmt(s['anchors']['hist_gb'], digits)} | {_fmt(s['anchors']['linear'], digits)} "
            f"| {' | '.join(_wins(s['vs'][k]) for k in ANCHORS)} |")
    compared = {n: d["summary"]["sampler"] for n, d in quality["datasets"].items()
                if d.get("summary", {}).get("sampler")}
    if compared:
        lines += ["", "TPE vs random search, same seeds and budget (best validation value of the search; test metric "
                  "of what `hps evaluate` tested). Optuna's TPE draws its first 10 trials at random from the same "
                  "seed, so the two searches share those trials:", "",
                  "| dataset | validation metric | TPE | random | TPE better | test: TPE | test: random | TPE better |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, c in compared.items():
            digits = 4 if _higher_is_better(quality["datasets"][name]["summary"]["metric"]) else 3
            lines.append(f"| {name} | {c['val_metric']} | {_fmt(c['tpe_val'], 4)} | {_fmt(c['random_val'], 4)} "
                         f"| {_wins(c['tpe_vs_random_val'])} | {_fmt(c['tpe_test'], digits)} "
                         f"| {_fmt(c['random_test'], digits)} | {_wins(c['tpe_vs_random_test'])} |")
    studied = {n: variant_summary(d["seeds"]) for n, d in quality["datasets"].items()}
    studied = {n: v for n, v in studied.items() if v}
    if studied:
        lines += ["", "The same searches tested again with the model chosen another way (`hps evaluate --force ARGS`); "
                  "\"better\" counts the seeds on which the variant beat the configured choice:", "",
                  "| dataset | metric | configured | variant | its test metric | better than configured |",
                  "|---|---|---|---|---|---|"]
        for name, v in studied.items():
            digits = 4 if _higher_is_better(v["metric"]) else 3
            for variant, r in v["variants"].items():
                lines.append(f"| {name} | {v['metric'].removeprefix('test_')} | {_fmt(v['configured'], digits)} "
                             f"| {variant} (`{' '.join(r['args'])}`) | {_fmt(r['test'], digits)} "
                             f"| {_wins(r['vs_configured'])} |")
    reused = sorted({r[label]["reused_from"] for d in quality["datasets"].values() for r in d["seeds"].values()
                     for label in ("hps", "hps_random") if "reused_from" in r.get(label, {})})
    if reused:
        lines += ["", f"Searches reused from earlier runs (same overrides and budget, run by the code of their day): "
                  f"{', '.join(f'`{Path(p).name}`' for p in reused)}."]
    failed = [f"{n} seed {s} {label}: {r[label]['error']}" for n, d in quality["datasets"].items()
              for s, r in d["seeds"].items() for label in ("hps", "hps_random") if "error" in r.get(label, {})]
    if failed:
        lines += ["", "Failed searches (left out above):", *[f"- {f}" for f in failed]]
    return "\n".join(lines)


def write(results: dict, out: Path) -> Path:
    """The table beside the JSON file: ``latest.json`` → ``latest-quality.md``, ``quality.json`` → ``quality.md``."""
    path = out.with_suffix(".md") if out.stem.endswith("quality") else out.with_name(f"{out.stem}-quality.md")
    path.write_text(table(results) + "\n")
    return path
