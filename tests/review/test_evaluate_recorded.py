"""`hps evaluate` on a search recorded by hand: the choosing, refusing, testing, recording and registering steps,
without training (untrained networks on the bundled breast cancer split). Real searches: tests/review/test_evaluate.py."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from search.config.dataset import split_from_config
from search.config.schema import parse_config
from search.errors import AlreadyEvaluated
from search.review.evaluate import EVALUATED_MODEL, evaluate_search
from search.review.predict import predict_file
from tests.conftest import load_yaml
from tests.fabricate import Trial, record_search, sqlite_uri
from trainables.checkpoint import load_model, save_model
from trainables.data import DataError
from trainables.model import Architecture, build_mlp
from trainables.predict import predict_frame

LOSSES = {"a": [0.6, 0.4], "b": [0.5, 0.45, 0.3], "c": [0.7], "d": [0.2]}  # d failed: never chosen


@pytest.fixture
def search(tmp_path):
    raw = load_yaml("breast_cancer.yaml")
    raw["tracking"]["registered_model"] = "bc"
    cfg = parse_config(raw)
    split = split_from_config(cfg)
    trials = [Trial(name, losses, {}, outcome="failed" if name == "d" else "finished")
              for name, losses in LOSSES.items()]
    recorded = record_search(sqlite_uri(tmp_path), "bc-search", trials, config=cfg.model_dump(mode="json", by_alias=True),
                             tags={"hps.split_fingerprint": split.fingerprint})
    prep = split.preprocessor
    for seed, (name, run_id) in enumerate(recorded.trials.items()):
        arch = Architecture(n_features=len(prep.encoded_names), n_outputs=prep.n_outputs, hidden=(4,))
        torch.manual_seed(seed)
        save_model(tmp_path / name, build_mlp(arch).state_dict(), {
            "architecture": arch.to_dict(), "preprocessor": prep.to_dict(), "params": {},
            "epoch": int(np.argmin(LOSSES[name])) + 1})
        recorded.client.log_artifacts(run_id, str(tmp_path / name), "model")
    return recorded, split


def test_the_best_trial_is_tested_recorded_and_registered(search, tmp_path):
    recorded, split = search
    evaluation = evaluate_search(recorded.uri, "bc-search")
    assert evaluation.trial_id == "b" and evaluation.epoch == 3 and evaluation.run_id == recorded.trials["b"]
    assert evaluation.selection == "b: val_loss 0.3 at epoch 3" and evaluation.registered == "models:/bc@champion"
    assert evaluation.n_test == len(split.test_idx) and not evaluation.refit
    assert evaluation.artifacts == ["confusion_matrix.png", "evaluation_1.json", "per_class_report.csv"]
    parent = recorded.client.get_run(recorded.parent)
    assert parent.data.tags["hps.test_uses"] == "1" and parent.data.tags["hps.test_trial_id"] == "b"
    assert parent.data.metrics["test_accuracy"] == pytest.approx(evaluation.metrics["test_accuracy"])
    assert parent.info.status == "FINISHED"
    assert {a.path for a in recorded.client.list_artifacts(recorded.parent)} >= {"test", EVALUATED_MODEL, "config.yaml"}

    # What was tested is what the search name now predicts with.
    rows, _ = split.test_rows()
    rows.to_csv(tmp_path / "rows.csv", index=False)
    predict_file(recorded.uri, "bc-search", str(tmp_path / "rows.csv"), str(tmp_path / "out.csv"))
    model, _ = load_model(tmp_path / "b")
    expected = predict_frame(model, split.preprocessor, rows)
    written = pd.read_csv(tmp_path / "out.csv")
    assert list(written.columns) == list(expected.columns) and (written["prediction"].to_numpy() == expected["prediction"].to_numpy()).all()
    numbers = expected.select_dtypes("number").columns
    assert len(numbers) and np.allclose(written[numbers], expected[numbers], rtol=1e-5)

    with pytest.raises(AlreadyEvaluated, match="already evaluated"):
        evaluate_search(recorded.uri, "bc-search")


def test_top_k_averages_the_best_trials_that_did_not_fail(search):
    recorded, _ = search
    evaluation = evaluate_search(recorded.uri, "bc-search", top_k=5, register_as="bc-top")
    assert [m["trial"] for m in evaluation.members] == ["b", "a", "c"] and evaluation.top_k == 5
    assert evaluation.selection.startswith("mean of the top 3 trials by val_loss: b (0.3 at epoch 3), a (")
    assert evaluation.registered == "models:/bc-top@champion"


def test_arguments_and_a_changed_split_are_refused_before_the_test_set_is_used(search):
    recorded, _ = search
    with pytest.raises(DataError, match="--top-k must be >= 1"):
        evaluate_search(recorded.uri, "bc-search", top_k=0)
    with pytest.raises(DataError, match="--register-as"):
        evaluate_search(recorded.uri, "bc-search", register_as="team/bc")
    recorded.client.set_tag(recorded.parent, "hps.split_fingerprint", "other")
    with pytest.raises(DataError, match="split changed since the search"):
        evaluate_search(recorded.uri, "bc-search")
    assert "hps.test_uses" not in recorded.client.get_run(recorded.parent).data.tags
