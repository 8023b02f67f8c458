"""The plain-Optuna way to run the same search: one process, ``study.optimize(n_jobs=<max_concurrent>)``, the same
trainable (:func:`trainables.train.train_trial`), space, sampler, seed, trials and epochs; no Ray, no MLflow.

``python -m benchmarks.optuna_baseline CONFIG [--set key=value ...] [--replay PARAMS.json]`` prints one JSON line
with the best value. ``--replay`` (a JSON list of parameter dicts) enqueues exactly those configurations instead
of sampling: the overhead figure replays the trials ``hps run`` trained, so both sides train the same networks.
(The same sampler and seed do not give the same trials: here two threads draw from one sampler concurrently,
and TPE follows whichever results arrive first.)
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import optuna
import torch

from search.config.dataset import split_from_config
from search.config.schema import load_config
from search.config.space import define_by_run
from search.run.searcher import make_sampler
from trainables.device import local_device
from trainables.train import TrainSettings, train_trial


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--replay", help="JSON list of parameter dicts to train, in order, instead of sampling")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    cfg = load_config(args.config, args.set)
    data = split_from_config(cfg).trial_data()
    sample = define_by_run(cfg.space)
    device = local_device(cfg.resources.gpus_per_trial)
    settings = TrainSettings(max_epochs=cfg.scheduler.max_epochs, metric=cfg.search.metric, seed=cfg.search.seed or 0,
                             checkpoint_every=cfg.training.checkpoint_every, amp=cfg.training.amp, device=device)
    # Trials are threads of one process here, so the thread count is shared: give each its share of CPUs.
    torch.set_num_threads(max(1, int(cfg.resources.cpus_per_trial)))

    def objective(trial: optuna.Trial) -> float:
        params = {**sample(trial), **trial.params}
        last: dict = {}
        train_trial(params, data, settings, lambda metrics, snapshot: last.update(metrics))
        return last[f"best_{cfg.search.metric}"]

    optuna.logging.set_verbosity(logging.WARNING)
    direction = "minimize" if cfg.search.mode == "min" else "maximize"
    study = optuna.create_study(direction=direction, sampler=make_sampler(cfg.search.sampler, cfg.search.seed))
    n_trials = cfg.search.num_samples
    if args.replay:
        configurations = json.loads(Path(args.replay).read_text())
        for params in configurations:
            study.enqueue_trial(params)
        n_trials = len(configurations)
    study.optimize(objective, n_trials=n_trials, n_jobs=cfg.search.max_concurrent)
    print(json.dumps({"best_value": study.best_value, "n_trials": len(study.trials),
                      "in_process_s": time.perf_counter() - start}))


if __name__ == "__main__":
    main()
