"""What MLflow-native records cost per trial, in the writer thread of the search's driver, against a real
`mlflow server` (sqlite backend, proxied artifacts) on this machine.

For each of ``--trials`` trial runs, with the model folder of a real digits trial:

- ``before``: what a trial's end cost before LoggedModels and datasets: the run's ``model/`` artifact upload, its
  best-epoch summary and its ``hps.model`` tag;
- ``after``: the same, plus the trial's dataset inputs and its LoggedModel (create, upload the pyfunc template and
  the model folder, finalize, log the run's model output and the linked metrics).

The pyfunc template is made once per process (its cost is reported apart). Alternating the two per trial, several
repetitions: ``python -m benchmarks.tracking_cost --trials 40 --reps 3``."""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient

from search.records.inputs import log_datasets, split_datasets
from search.records.logged_models import log_trial_model, pyfunc_template
from tests.conftest import MlflowServer
from trainables.checkpoint import save_checkpoint
from trainables.splitting import split_dataset
from trainables.train import TrainSettings, train_trial


def trial_model_folder(directory: Path):
    """A digits trial's real model folder (weights + model.json) and the split it trained on."""
    split = split_dataset("sklearn:digits", "auto", 0.15, 0.15, 0)
    reports = []
    train_trial({"units": 128}, split.trial_data(), TrainSettings(max_epochs=1), lambda m, s: reports.append(s))
    save_checkpoint(directory, reports[-1].state, reports[-1].description)
    return directory / "model", split


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        server = MlflowServer(root)
        server.start()
        try:
            model, split = trial_model_folder(root / "checkpoint")
            datasets = split_datasets(split, "sklearn:digits")
            client = MlflowClient(server.uri)
            experiment = client.create_experiment("cost")
            start = time.perf_counter()
            pyfunc_template()
            template_s = time.perf_counter() - start
            times: dict[str, list[float]] = {"before": [], "after": []}
            for rep in range(args.reps):
                for index in range(args.trials):
                    for kind in ("before", "after") if index % 2 == 0 else ("after", "before"):
                        run = client.create_run(experiment, run_name=f"{kind}-{rep}-{index}").info.run_id
                        start = time.perf_counter()
                        client.log_artifacts(run, str(model), artifact_path="model")
                        if kind == "after":  # as the writer does it: the tags go with the model's metrics
                            log_datasets(client, run, datasets)
                            log_trial_model(client, experiment, run, str(model), f"trial-{index}",
                                            {"units": 128, "lr": 0.001}, {"best_epoch_val_loss": 0.1},
                                            datasets=datasets, look_first=False, run_tags={"hps.model": "model"})
                        else:
                            client.log_batch(run, metrics=[Metric("best_epoch_val_loss", 0.1, 0, 0)],
                                             tags=[RunTag("hps.model", "model")])
                        times[kind].append(time.perf_counter() - start)
        finally:
            server.stop()
    summary = {kind: {"median_ms": 1000 * statistics.median(v), "mean_ms": 1000 * statistics.fmean(v), "n": len(v)}
               for kind, v in times.items()}
    summary["added_ms_per_trial"] = summary["after"]["median_ms"] - summary["before"]["median_ms"]
    summary["template_once_s"] = template_s
    print(json.dumps(summary, indent=1))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
