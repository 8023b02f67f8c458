"""Packed trials end to end (real `mlflow server`, real Ray): a search whose trials train together in pack servers,
each still a trial in every sense — its own Optuna trial, MLflow child run with per-epoch metrics and model,
checkpoints, ASHA decisions — and exactly the metrics the same configuration gets trained alone."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time
from pathlib import Path

import pytest
import ray
import yaml
from mlflow.tracking import MlflowClient

from search.cli import main as hps_main
from search.config.dataset import split_from_config
from search.config.schema import ConfigError, parse_config
from search.records.leaderboard import find_search_run, leaderboard, trial_runs
from search.review.evaluate import evaluate_search
from search.run.packing.servers import pack_slots, server_names
from search.run.tuner import run_search
from tests.conftest import load_yaml, shrink
from tests.run.test_resilience import assert_clean_histories, children, output_of, slow_config, start_hps, wait_until
from trainables.train import TrainSettings, train_trial

pytestmark = pytest.mark.slow
NUM_SAMPLES, MAX_EPOCHS, PACK = 8, 6, 2
# Trials that pack: one depth, activation, norm, optimizer and batch size; widths within one bucket (33-64 → 64);
# no dropout, so a packed member must equal its configuration trained alone.
PACKING_SPACE = {
    "n_layers": 2,
    "units": {"type": "int", "low": 33, "high": 64, "per_layer": True},
    "lr": {"type": "float", "low": 1.0e-3, "high": 3.0e-2, "log": True},
    "weight_decay": {"type": "float", "low": 1.0e-6, "high": 1.0e-3, "log": True},
    "optimizer": "adam",
    "batch_size": 64,
}


def packed_config(name: str, uri: str) -> dict:
    raw = shrink(load_yaml("digits.yaml"), name, uri, num_samples=NUM_SAMPLES, max_epochs=MAX_EPOCHS)
    raw["space"] = PACKING_SPACE
    # One pack server of two: 2 trial actors and the server to start (each ~3 CPU-seconds), trials in four waves.
    raw["search"]["max_concurrent"] = PACK
    raw["scheduler"].update(grace_period=2, reduction_factor=2)
    raw["resources"] = {"cpus_per_trial": 1, "gpus_per_trial": 0, "pack": PACK}
    raw["training"] = {"checkpoint_every": 2, "report_interval_s": 0}
    return raw


@pytest.fixture(scope="module")
def packed(ray_session, mlflow_server, tmp_path_factory):
    cfg = parse_config(packed_config("it-packed", mlflow_server))
    outcome = run_search(cfg, storage=str(tmp_path_factory.mktemp("storage")))
    client = MlflowClient(mlflow_server)
    parent = client.get_run(outcome.parent_run_id)
    return cfg, client, parent, trial_runs(client, parent)


def test_every_packed_trial_is_a_trial_with_its_own_run_metrics_and_model(packed):
    cfg, client, parent, children = packed
    assert parent.info.status == "FINISHED"
    assert len(children) == NUM_SAMPLES and all(c.info.status == "FINISHED" for c in children)
    for child in children:
        last = int(child.data.tags["hps.last_epoch"])
        history = client.get_metric_history(child.info.run_id, "val_loss")
        assert sorted(m.step for m in history) == list(range(1, last + 1))
        assert child.data.tags["hps.model"] == "model"  # the best epoch's model, uploaded
    # Trials really trained together: some epochs were trained by a pack of several members.
    sizes = [m.value for c in children for m in client.get_metric_history(c.info.run_id, "pack_members")]
    assert max(sizes) > 1


def test_asha_decides_for_each_member(packed):
    _, _, parent, children = packed
    outcomes = {c.data.tags["hps.outcome"] for c in children}
    assert {"stopped_early", "completed"} <= outcomes
    assert parent.data.tags["hps.n_stopped_early"] != "0"


def test_a_packed_member_trains_exactly_as_its_configuration_alone(packed):
    cfg, client, parent, children = packed
    board = leaderboard(client, parent)
    best = next(c for c in children if c.info.run_id == board.iloc[0]["run_id"])
    params = {k: yaml.safe_load(v) for k, v in best.data.params.items()}
    data = split_from_config(cfg).trial_folds()
    alone: list[dict] = []
    settings = TrainSettings(max_epochs=int(best.data.tags["hps.last_epoch"]), metric=cfg.search.metric,
                             seed=cfg.training_seed)
    train_trial(params, data, settings, lambda metrics, snapshot: alone.append(metrics))
    packed_history = sorted(client.get_metric_history(best.info.run_id, "val_loss"), key=lambda m: m.step)
    assert [m.step for m in packed_history] == [m["epoch"] for m in alone]
    for recorded, solo in zip(packed_history, alone):
        assert recorded.value == pytest.approx(solo["val_loss"], rel=1e-4, abs=1e-5)


def test_the_chosen_packed_trial_is_evaluated_like_any_other(packed, mlflow_server):
    evaluation = evaluate_search(mlflow_server, "it-packed")
    assert 0.5 < evaluation.metrics["test_accuracy"] <= 1.0


def test_pack_servers_are_named_per_search_and_cover_the_concurrency():
    assert pack_slots(8, 4) == 2 and pack_slots(9, 4) == 3 and pack_slots(2, 8) == 1
    a, b = server_names(2), server_names(2)  # e.g. `hps run`, then `hps resume` while the first run's still exit
    assert len(set(a)) == 2 and not set(a) & set(b)


def test_packing_refuses_folds_and_compile(mlflow_server):
    raw = packed_config("bad", mlflow_server)
    raw["data"]["split"] = {"test": 0.2, "folds": 3, "seed": 0}
    with pytest.raises(ConfigError, match="resources.pack"):
        parse_config(raw)
    raw = packed_config("bad", mlflow_server)
    raw["training"]["compile"] = True
    with pytest.raises(ConfigError, match="resources.pack"):
        parse_config(raw)
    raw = packed_config("bad", mlflow_server)
    raw["resources"].update(cpus_per_trial=0.001, pack=16)  # a packed trial's share below Ray's 0.0001 step
    with pytest.raises(ConfigError, match="steps of 0.0001"):
        parse_config(raw)


def pack_server_pids(holding_trials: bool = False) -> list[int]:
    """Processes of the live pack servers in this test session's Ray (any search's: named ``hps-pack-...``), or of
    those holding trials."""
    pids = []
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["name"].startswith("hps-pack-"):
            try:
                server = ray.get_actor(actor["name"], namespace=actor["namespace"])
                if not holding_trials or ray.get(server.load.remote({}), timeout=10)[1] > 0:
                    pids.append(ray.get(server.process_id.remote(), timeout=10))
            except Exception:  # noqa: BLE001 - on its way out
                continue
    return pids


def test_a_killed_pack_server_an_outage_and_a_killed_driver_lose_nothing(ray_session, mlflow_link, mlflow_server,
                                                                          tmp_path, capsys):
    """A pack server's process is killed (SIGKILL) mid-search: Ray starts it again and Tune retries its trials from
    their checkpoints into it (the search's only server: the checkpoint awaited during the outage below is written
    only if the restarted server trains; a restart without its data once failed every trial it held). Then the
    tracking server cannot be reached while the packs train (writes are buffered). Then the driver is killed: `hps
    resume` finishes the search with every trial once and every epoch once in MLflow, its trials packed again."""
    address = ray_session.get_runtime_context().gcs_address
    storage = str(tmp_path / "runs")
    # `hps` reaches the server through a path that is cut below; the test reads it directly.
    config = slow_config(tmp_path / "c.yaml", "packed-faults", mlflow_link.uri, num_samples=2, max_epochs=20,
                         max_failures=3, max_concurrent=2)
    raw = yaml.safe_load(config.read_text())
    # A checkpoint every 3 epochs: one lands soon after the outage begins, and the retries lose few epochs.
    raw["training"]["checkpoint_every"] = 3
    # One width bucket (128: packable on a CPU); batches of 4 rows make an epoch last long enough (~0.3 s) for the
    # faults to land while the trials still train.
    raw["space"].update(units={"type": "int", "low": 65, "high": 128}, dropout=0.0, batch_size=4)
    raw["resources"] = {"cpus_per_trial": 1, "pack": 2}  # one server of two: fewer actors to start, twice
    config.write_text(yaml.safe_dump(raw))
    client = MlflowClient(mlflow_server)

    first = start_hps("run", str(config), "--address", address, "--storage", storage, cwd=tmp_path)
    wait_until(lambda: any(r.data.metrics.get("best_epoch", 0) >= 2 for r in children(client, "packed-faults")),
               what="two epochs trained", alive=first)
    victim = wait_until(lambda: pack_server_pids(holding_trials=True), what="a server holding trials", alive=first)[0]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: any(int(r.data.tags.get("hps.retries", 0)) >= 1 for r in children(client, "packed-faults")),
               what="a trial retried after its server was killed", alive=first)
    # Said in one line per attempt, with the error's last line; not Tune's traceback.
    retried = wait_until(lambda: [line for line in first.output.splitlines()
                                  if "retrying from its last checkpoint" in line], what="the retry's line", alive=first)
    assert "(attempt 2 of 4): " in retried[0] and "no error text" not in retried[0], retried
    assert "Trial task failed" not in first.output
    try:
        mlflow_link.cut()  # the outage: the packs keep training while the server cannot be reached
        before = set(Path(storage).glob("packed-faults/*/checkpoint_*"))
        wait_until(lambda: "buffering writes" in first.output, what="writes buffered", alive=first)
        wait_until(lambda: set(Path(storage).glob("packed-faults/*/checkpoint_*")) - before,
                   what="a checkpoint written during the outage", alive=first)
    finally:
        mlflow_link.restore()
    assert first.process.poll() is None, "the search ended before its driver could be killed: make epochs slower"
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(30)
    wait_until(lambda: not pack_server_pids(), timeout=60, what="the killed driver's servers gone")

    # The last resume in this process: the same `hps resume` (search.cli.main), without ~3 s of imports.
    assert hps_main(["resume", "packed-faults", "--address", address, "--storage", storage]) == 0, \
        output_of(tmp_path) + str(capsys.readouterr())
    runs = children(client, "packed-faults")
    assert len(runs) == 2 and len({r.data.tags["hps.trial_id"] for r in runs}) == 2
    assert {r.data.tags["hps.outcome"] for r in runs} == {"completed"}
    assert_clean_histories(client, runs)
    assert find_search_run(client, "packed-faults").info.status == "FINISHED"
    packed_epochs = [m.value for r in runs for m in client.get_metric_history(r.info.run_id, "pack_members")]
    assert max(packed_epochs) == 2


def test_soak_random_member_kills_and_asha_stops_every_trial_ends(ray_session, mlflow_server, tmp_path):
    """A packed ASHA search whose members' trial processes are killed (SIGKILL) at random moments: Tune retries each
    from its checkpoint into a pack, ASHA stops others at its rungs, and every trial ends, recorded once."""
    rng = random.Random(27)
    address = ray_session.get_runtime_context().gcs_address
    config = slow_config(tmp_path / "c.yaml", "soak", mlflow_server, num_samples=10, max_epochs=10, max_failures=4,
                         max_concurrent=4)
    raw = yaml.safe_load(config.read_text())
    raw["space"].update(units=128, dropout=0.0, batch_size=4)  # packable on a CPU; epochs of ~0.3 s
    raw["scheduler"] = {"type": "asha", "max_epochs": 10, "grace_period": 2, "reduction_factor": 2}
    raw["resources"] = {"cpus_per_trial": 1, "pack": 4}  # one server of four
    raw["training"]["checkpoint_every"] = 1
    config.write_text(yaml.safe_dump(raw))
    client = MlflowClient(mlflow_server)
    proc = start_hps("run", str(config), "--address", address, "--storage", str(tmp_path / "runs"), cwd=tmp_path)
    killed = set()
    for _ in range(2):
        def a_member_mid_trial():
            running = [r for r in children(client, "soak") if r.info.status == "RUNNING" and "pid" in r.data.tags
                       and r.data.metrics.get("best_epoch", 0) >= 1 and r.data.tags["hps.trial_id"] not in killed]
            return rng.choice(running) if running else None

        victim = wait_until(a_member_mid_trial, what="a packed member mid-trial", alive=proc)
        killed.add(victim.data.tags["hps.trial_id"])
        with contextlib.suppress(ProcessLookupError):  # it may have just ended on its own
            os.kill(int(victim.data.tags["pid"]), signal.SIGKILL)
        time.sleep(rng.uniform(0.5, 2.0))
    assert proc.wait() == 0, proc.output
    runs = children(client, "soak")
    assert len(runs) == 10 and len({r.data.tags["hps.trial_id"] for r in runs}) == 10
    assert {r.data.tags["hps.outcome"] for r in runs} <= {"completed", "stopped_early"}
    assert any(r.data.tags["hps.outcome"] == "stopped_early" for r in runs)  # ASHA stopped some at its rungs
    assert sum(int(r.data.tags.get("hps.retries", 0)) for r in runs) >= 1
    assert_clean_histories(client, runs)
