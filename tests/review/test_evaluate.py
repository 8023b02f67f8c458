"""run → evaluate → predict end to end on a real `mlflow server` and a real local Ray.

A CSV with a categorical column and missing values (regression), and a bundled binary classifier.
"""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from search.cli import main
from search.config.dataset import split_from_config
from search.config.schema import parse_config
from search.errors import AlreadyEvaluated, ModelNotFound
from search.records.leaderboard import recorded_config
from search.review.evaluate import evaluate_search
from search.review.predict import predict_file, resolve_model
from search.run.tuner import run_search
from tests.conftest import load_yaml, shrink
from trainables.data import DataError
from trainables.predict import predict_frame

pytestmark = pytest.mark.slow


def make_table(n: int, seed: int) -> pd.DataFrame:
    """Cars-like rows: numeric columns with gaps, a categorical origin with gaps, a target with gaps."""
    rng = np.random.default_rng(seed)
    weight = rng.normal(3000, 600, n)
    power = rng.normal(100, 30, n)
    origin = rng.choice(["usa", "europe", "japan"], n)
    mpg = 60 - weight / 100 - power / 20 + np.select([origin == "japan", origin == "europe"], [4.0, 2.0], 0.0)
    frame = pd.DataFrame({"weight": weight, "horsepower": power, "origin": origin,
                          "cylinders": rng.choice([4, 6, 8], n),  # an integer column without gaps in training
                          "name": [f"car {i}" for i in range(n)], "mpg": mpg + rng.normal(0, 1, n)})
    for column, gaps in (("horsepower", 12), ("origin", 8), ("mpg", 5)):
        frame.loc[rng.choice(n, min(gaps, n // 4), replace=False), column] = np.nan
    return frame


@pytest.fixture(scope="module")
def csv_search(ray_session, mlflow_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("csv")
    make_table(300, 0).to_csv(root / "cars.csv", index=False)
    raw = shrink(load_yaml("auto_mpg.yaml"), "eval-cars", mlflow_server, num_samples=4, max_epochs=8)
    raw["data"].update(source=f"csv:{root / 'cars.csv'}", target="mpg", drop=["name"])
    raw["data"]["split"] = {"val": 0.2, "test": 0.15, "seed": 0}  # one validation split (the config cross-validates)
    raw["evaluate"] = {"top_k": 1, "refit": False}  # the default: the first evaluation is the single best trial as trained
    raw["tracking"]["review_plots"] = True  # the default; tests/conftest.py's shrink turns them off
    cfg = parse_config(raw)
    outcome = run_search(cfg, storage=str(root / "runs"))
    evaluation = evaluate_search(mlflow_server, "eval-cars")
    return cfg, outcome, evaluation, root


@pytest.fixture(scope="module")
def binary_search(ray_session, mlflow_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("bc")
    raw = shrink(load_yaml("breast_cancer.yaml"), "eval-bc", mlflow_server, num_samples=3, max_epochs=5)
    raw["tracking"]["registered_model"] = "bc-classifier"
    outcome = run_search(parse_config(raw), storage=str(root / "runs"))
    return outcome, evaluate_search(mlflow_server, "eval-bc"), root


def test_regression_test_metrics_and_plots_on_the_parent(csv_search, mlflow_server):
    _, outcome, evaluation, _ = csv_search
    client = MlflowClient(mlflow_server)
    parent = client.get_run(outcome.parent_run_id)
    assert {"test_mse", "test_rmse", "test_mae", "test_r2"} <= set(parent.data.metrics)
    assert parent.data.metrics["test_mae"] == pytest.approx(evaluation.metrics["test_mae"])
    assert parent.data.metrics["test_rmse"] == pytest.approx(np.sqrt(evaluation.metrics["test_mse"]))
    assert parent.data.tags["hps.test_trial_id"] == evaluation.trial_id
    assert parent.data.tags["hps.test_run_id"] == outcome.leaderboard.iloc[0]["run_id"]  # best by validation
    assert "at epoch" in parent.data.tags["hps.test_selection"]
    assert parent.info.status == "FINISHED"
    test_files = {a.path for a in client.list_artifacts(parent.info.run_id, "test")}
    assert {"test/predicted_vs_actual.png", "test/evaluation_1.json"} <= test_files
    assert parent.data.params["data.n_dropped_missing_target"] == "5"


def test_review_report_is_on_the_parent(csv_search, mlflow_server):
    _, outcome, _, _ = csv_search
    client = MlflowClient(mlflow_server)
    report = {a.path for a in client.list_artifacts(outcome.parent_run_id, "report")}
    assert {"report/optimization_history.png", "report/validation_curves.png", "report/slice.png"} <= report
    assert main(["report", "eval-cars", "--tracking-uri", mlflow_server]) == 0


def test_second_evaluation_is_refused_then_forced_and_recorded(csv_search, mlflow_server, capsys):
    _, outcome, first, _ = csv_search
    with pytest.raises(AlreadyEvaluated, match="already evaluated") as info:
        evaluate_search(mlflow_server, "eval-cars")
    assert "test_mae=" in str(info.value) and "--force" in str(info.value)
    assert main(["evaluate", "eval-cars", "--tracking-uri", mlflow_server]) == 2
    assert "already evaluated" in capsys.readouterr().err
    second = evaluate_search(mlflow_server, "eval-cars", force=True)
    assert second.metrics == pytest.approx(first.metrics)  # same model, same test rows
    client = MlflowClient(mlflow_server)
    parent = client.get_run(outcome.parent_run_id)
    assert parent.data.tags["hps.test_uses"] == "2"
    history = client.get_metric_history(parent.info.run_id, "test_mae")
    assert sorted(m.step for m in history) == [1, 2]
    local = client.download_artifacts(parent.info.run_id, "test/evaluation_2.json", str(csv_search[3]))
    record = json.loads(open(local).read())
    assert record["forced"] is True and record["use"] == 2


def test_predict_raw_rows_with_unseen_category(csv_search, mlflow_server, tmp_path):
    rows = make_table(20, 1).drop(columns=["mpg"])
    rows.loc[0, "origin"] = "mars"  # never seen in training: one-hot all zeros, not a crash
    rows.loc[1, "horsepower"] = np.nan
    path = tmp_path / "new.csv"
    rows.to_csv(path, index=False)
    out = tmp_path / "pred.csv"
    assert predict_file(mlflow_server, "models:/eval-cars@champion", str(path), str(out)) == 20
    predictions = pd.read_csv(out)
    assert list(predictions.columns) == ["prediction"] and predictions["prediction"].notna().all()
    # the same model through the search name and through the run URI gives the same numbers
    run_id = MlflowClient(mlflow_server).get_run(csv_search[1].parent_run_id).data.tags["hps.test_run_id"]
    for reference in ("eval-cars", f"runs:/{run_id}/model"):
        predict_file(mlflow_server, reference, str(path), str(tmp_path / "again.csv"))
        assert np.allclose(pd.read_csv(tmp_path / "again.csv")["prediction"], predictions["prediction"], rtol=1e-5)


def test_pyfunc_model_takes_raw_rows_as_pandas_reads_them(csv_search, mlflow_server, tmp_path):
    # A column of whole numbers is read as int64, the same column with a gap as float64: MLflow's enforcement of a
    # declared long or double refuses one of the two (and `any` makes the scoring server refuse CSV), so the champion
    # declares its outputs only; its input example shows the raw columns.
    mlflow.set_tracking_uri(mlflow_server)
    model = mlflow.pyfunc.load_model("models:/eval-cars@champion")
    raw = make_table(6, 3).drop(columns=["mpg"])
    raw.to_csv(tmp_path / "raw.csv", index=False)
    whole = pd.read_csv(tmp_path / "raw.csv")
    assert whole["cylinders"].dtype == np.int64
    expected = predict_file(mlflow_server, "eval-cars", str(tmp_path / "raw.csv"), str(tmp_path / "by_hps.csv"))
    by_hps = pd.read_csv(tmp_path / "by_hps.csv")["prediction"].to_numpy()
    assert expected == 6 and np.allclose(model.predict(whole)["prediction"], by_hps, rtol=1e-5)
    gap = whole.copy()
    gap.loc[0, "cylinders"] = np.nan  # now float64; imputed with the training median, like `hps predict` does
    assert gap["cylinders"].dtype == np.float64 and model.predict(gap)["prediction"].notna().all()
    assert model.metadata.get_input_schema() is None and model.metadata.get_output_schema() is not None
    assert model.metadata.saved_input_example_info is not None


def test_mlflow_scoring_server_answers_csv_and_json_like_hps_predict(csv_search, mlflow_server, tmp_path):
    """Issue 14: `mlflow models serve` refused text/csv bodies (columns typed `any`). A real scoring server for the
    champion, asked with CSV, dataframe_split and dataframe_records: integer columns, gaps, an unseen category."""
    import json as jsonlib

    import requests

    from tests.serving import scoring_server

    rows = make_table(8, 5).drop(columns=["mpg", "name"])
    rows.loc[0, "origin"] = "mars"  # unseen category
    rows.loc[1, "horsepower"] = np.nan  # a gap in a float column
    rows["cylinders"] = rows["cylinders"].astype("Int64")
    rows.loc[2, "cylinders"] = pd.NA  # a gap in an integer column: the CSV cell is empty
    rows.to_csv(tmp_path / "rows.csv", index=False)
    predict_file(mlflow_server, "models:/eval-cars@champion", str(tmp_path / "rows.csv"), str(tmp_path / "hps.csv"))
    by_hps = pd.read_csv(tmp_path / "hps.csv")["prediction"].to_numpy()

    with scoring_server("models:/eval-cars@champion", mlflow_server, tmp_path) as url:
        csv_text = (tmp_path / "rows.csv").read_text()
        assert csv_text.splitlines()[3].split(",")[3] == ""  # the integer column's gap is an empty cell
        records = jsonlib.loads(rows.astype(object).where(rows.notna(), None).to_json(orient="records"))
        split = {"columns": list(rows.columns), "data": [[r[c] for c in rows.columns] for r in records]}
        bodies = {
            "text/csv": csv_text,
            "dataframe_split": jsonlib.dumps({"dataframe_split": split}),
            "dataframe_records": jsonlib.dumps({"dataframe_records": records}),
        }
        assert isinstance(records[3]["cylinders"], int)  # JSON integers, not floats
        for name, body in bodies.items():
            content_type = "text/csv" if name == "text/csv" else "application/json"
            answer = requests.post(f"{url}/invocations", data=body, headers={"Content-Type": content_type}, timeout=60)
            assert answer.status_code == 200, (name, answer.text[:500])
            served = pd.DataFrame(answer.json()["predictions"])["prediction"].to_numpy(dtype=float)
            assert np.allclose(served, by_hps, rtol=1e-5), (name, served, by_hps)


def test_bad_registry_name_and_unusable_predict_files_fail_before_anything_is_used(csv_search, mlflow_server,
                                                                                  tmp_path, capsys):
    client = MlflowClient(mlflow_server)
    uses = client.get_run(csv_search[1].parent_run_id).data.tags["hps.test_uses"]
    assert main(["evaluate", "eval-cars", "--force", "--register-as", "team/cars", "--tracking-uri", mlflow_server]) == 2
    assert "--register-as: 'team/cars' cannot be a Model Registry name" in capsys.readouterr().err
    assert client.get_run(csv_search[1].parent_run_id).data.tags["hps.test_uses"] == uses  # the test set not touched

    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "header.csv").write_text("weight,horsepower,origin,cylinders\n")
    make_table(3, 4).to_csv(tmp_path / "rows.csv", index=False)
    for input_csv, output, message in (
        ("empty.csv", "out.csv", "cannot read"),
        ("header.csv", "out.csv", "has a header but no rows"),
        ("rows.csv", "no/such/folder/out.csv", "folder 'no/such/folder' does not exist"),
    ):
        assert main(["predict", "eval-cars", str(tmp_path / input_csv), "-o", str(tmp_path / output) if "/" not in output
                     else output, "--tracking-uri", mlflow_server]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "out.csv").exists()


def test_predict_with_a_missing_feature_column_is_a_clear_error(csv_search, mlflow_server, tmp_path, capsys):
    path = tmp_path / "bad.csv"
    make_table(5, 2).drop(columns=["mpg", "weight"]).to_csv(path, index=False)
    with pytest.raises(DataError, match="weight"):
        predict_file(mlflow_server, "eval-cars", str(path), str(tmp_path / "x.csv"))
    assert main(["predict", "eval-cars", str(path), "-o", str(tmp_path / "x.csv"), "--tracking-uri", mlflow_server]) == 2
    assert "weight" in capsys.readouterr().err
    with pytest.raises(ModelNotFound):
        predict_file(mlflow_server, "models:/no-such-model@champion", str(path), str(tmp_path / "x.csv"))


def test_classifier_evaluation_registry_alias_and_pyfunc(binary_search, mlflow_server, tmp_path):
    outcome, evaluation, _ = binary_search
    assert {"test_accuracy", "test_precision", "test_recall", "test_f1", "test_log_loss", "test_roc_auc"} <= set(evaluation.metrics)
    assert evaluation.registered == "models:/bc-classifier@champion"
    client = MlflowClient(mlflow_server)
    version = client.get_model_version_by_alias("bc-classifier", "champion")
    assert version.tags["hps.search"] == "eval-bc"
    files = {a.path for a in client.list_artifacts(outcome.parent_run_id, "test")}
    assert {"test/confusion_matrix.png", "test/per_class_report.csv"} <= files
    # the registered model is a proper pyfunc: an output signature and an input example of raw feature columns
    mlflow.set_tracking_uri(mlflow_server)
    mlflow.set_registry_uri(mlflow_server)
    info = mlflow.models.get_model_info("models:/bc-classifier@champion")
    assert info.signature is not None and "prediction" in info.signature.outputs.input_names()
    from sklearn.datasets import load_breast_cancer

    rows = load_breast_cancer(as_frame=True).data.head(4)
    pyfunc = mlflow.pyfunc.load_model("models:/bc-classifier@champion")
    assert "mean radius" in pyfunc.input_example.columns
    predicted = pyfunc.predict(rows)
    assert set(predicted["prediction"]) <= {"malignant", "benign"}
    assert np.allclose(predicted[["proba_malignant", "proba_benign"]].sum(axis=1), 1.0, atol=1e-5)


def test_top_k_evaluates_and_registers_the_average_of_the_best_trials(csv_search, mlflow_server, tmp_path, capsys):
    cfg, outcome, _, _ = csv_search
    client = MlflowClient(mlflow_server)
    assert main(["evaluate", "eval-cars", "--top-k", "0", "--tracking-uri", mlflow_server]) == 2
    assert "--top-k must be >= 1" in capsys.readouterr().err

    assert main(["evaluate", "eval-cars", "--force", "--top-k", "3", "--tracking-uri", mlflow_server]) == 0
    assert "mean of the top 3 trials by val_mae" in capsys.readouterr().out
    parent = client.get_run(outcome.parent_run_id)
    board = outcome.leaderboard
    top3 = board[board["outcome"] != "failed"].sort_values("best_val_mae").head(3)
    assert parent.data.tags["hps.test_trial_id"] == ",".join(top3["trial"])
    assert parent.data.tags["hps.test_top_k"] == "3"

    # The test metric is the MAE of the mean of the three members' own predictions, computed here independently.
    rows, target = split_from_config(cfg).test_rows()
    member_predictions = []
    for run_id in top3["run_id"]:
        model, prep = resolve_model(client, f"runs:/{run_id}/model", str(tmp_path / run_id))
        member_predictions.append(predict_frame(model, prep, rows)["prediction"].to_numpy())
    mean_prediction = np.mean(member_predictions, axis=0)
    expected_mae = float(np.mean(np.abs(mean_prediction - target.to_numpy(dtype=float))))
    assert parent.data.metrics["test_mae"] == pytest.approx(expected_mae, rel=1e-5)

    # What was evaluated is what the registry, the search name and the pyfunc now serve.
    mlflow.set_tracking_uri(mlflow_server)
    served = mlflow.pyfunc.load_model("models:/eval-cars@champion").predict(rows.reset_index(drop=True))
    assert np.allclose(served["prediction"], mean_prediction, rtol=1e-5)
    rows.to_csv(tmp_path / "rows.csv", index=False)
    predict_file(mlflow_server, "eval-cars", str(tmp_path / "rows.csv"), str(tmp_path / "by_name.csv"))
    assert np.allclose(pd.read_csv(tmp_path / "by_name.csv")["prediction"], mean_prediction, rtol=1e-5)
    record = json.loads(open(client.download_artifacts(
        parent.info.run_id, f"test/evaluation_{parent.data.tags['hps.test_uses']}.json", str(tmp_path))).read())
    assert [m["trial"] for m in record["members"]] == list(top3["trial"])


def test_refit_retrains_the_chosen_configurations_on_train_and_validation(csv_search, mlflow_server, tmp_path, capsys):
    cfg, outcome, _, _ = csv_search
    assert main(["evaluate", "eval-cars", "--force", "--top-k", "2", "--refit", "--tracking-uri", mlflow_server]) == 0
    split = split_from_config(cfg)
    pooled = np.concatenate([split.train_idx, split.val_idx])
    assert f"retrained on train+validation ({len(pooled)} rows)" in capsys.readouterr().out
    client = MlflowClient(mlflow_server)
    parent = client.get_run(outcome.parent_run_id)
    assert parent.data.tags["hps.test_refit"] == "True"

    # The registered model is the retrained pair: preprocessing fitted on the pooled rows, each member trained for
    # the epoch count at which its trial was best on validation.
    model, prep = resolve_model(client, "models:/eval-cars@champion", str(tmp_path / "champion"))
    assert prep.target_mean == pytest.approx(split.table.target.iloc[pooled].mean())
    assert prep.fill["horsepower"] == pytest.approx(split.table.features.iloc[pooled]["horsepower"].median())
    best = outcome.leaderboard[outcome.leaderboard["outcome"] != "failed"].sort_values("best_val_mae").iloc[0]
    member = json.loads(open(client.download_artifacts(
        parent.info.run_id, "evaluated_model/member_0/model.json", str(tmp_path))).read())
    assert member["refit"] == {"trial": best["trial"], "rows": len(pooled)}
    assert member["epoch"] == max(1, int(best["best_epoch"]))

    # The logged test metric is that model's, on the test rows.
    rows, target = split.test_rows()
    predicted = predict_frame(model, prep, rows)["prediction"].to_numpy()
    expected_mae = float(np.mean(np.abs(predicted - target.to_numpy(dtype=float))))
    assert parent.data.metrics["test_mae"] == pytest.approx(expected_mae, rel=1e-5)


def test_classifier_top_k_refit_serves_mean_probabilities(binary_search, mlflow_server, capsys):
    outcome, _, _ = binary_search
    # Three trials ran: asking for five takes the three there are, and says so.
    assert main(["evaluate", "eval-bc", "--force", "--top-k", "5", "--refit", "--tracking-uri", mlflow_server]) == 0
    assert "(of 5 asked for: only 3 trials have a result)" in capsys.readouterr().out
    parent = MlflowClient(mlflow_server).get_run(outcome.parent_run_id)
    assert parent.data.tags["hps.test_top_k"] == "3" and parent.data.tags["hps.test_refit"] == "True"
    from sklearn.datasets import load_breast_cancer

    cfg = recorded_config(MlflowClient(mlflow_server), parent)
    rows, target = split_from_config(cfg).test_rows()
    mlflow.set_tracking_uri(mlflow_server)
    predicted = mlflow.pyfunc.load_model("models:/bc-classifier@champion").predict(rows.reset_index(drop=True))
    assert np.allclose(predicted[["proba_malignant", "proba_benign"]].sum(axis=1), 1.0, atol=1e-5)
    names = load_breast_cancer().target_names
    accuracy = float(np.mean(predicted["prediction"].to_numpy() == names[target.to_numpy()]))
    assert parent.data.metrics["test_accuracy"] == pytest.approx(accuracy)


def test_cross_validated_search_selects_on_folds_and_tests_the_refit(ray_session, mlflow_server, tmp_path, capsys):
    make_table(200, 2).to_csv(tmp_path / "cars.csv", index=False)
    raw = shrink(load_yaml("auto_mpg.yaml"), "eval-cars-cv", mlflow_server, num_samples=3, max_epochs=4)
    raw["data"].update(source=f"csv:{tmp_path / 'cars.csv'}", target="mpg", drop=["name"])
    raw["data"]["split"] = {"folds": 3, "test": 0.2, "seed": 0}
    raw["evaluate"] = {"top_k": 2}  # refit: on by default with folds
    cfg = parse_config(raw)
    outcome = run_search(cfg, storage=str(tmp_path / "runs"))
    client = MlflowClient(mlflow_server)
    parent = client.get_run(outcome.parent_run_id)
    split = split_from_config(cfg)
    assert parent.data.params["data.n_folds"] == "3" and parent.data.params["data.n_train"] == str(len(split.train_idx))

    # A trial's per-epoch validation metrics are the means over its three folds; its logged model is fold 1's.
    best = outcome.leaderboard.sort_values("best_val_mae").iloc[0]
    description = json.loads(open(client.download_artifacts(best["run_id"], "model/model.json", str(tmp_path))).read())
    assert description["cross_validation"] == {"fold": 1, "folds": 3}
    assert description["preprocessor"] == split.trial_folds()[0].preprocessor
    # ... and how far the folds were apart at that epoch is on the leaderboard next to the mean.
    assert best["val_mae_fold_std"] > 0

    # Testing a fold's model is refused before anything is recorded.
    assert main(["evaluate", "eval-cars-cv", "--no-refit", "--tracking-uri", mlflow_server]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # (above it: MLflow's download bar, off in `hps`)
    assert error.startswith("hps: error: search 'eval-cars-cv' cross-validated (3 folds)")
    assert "hps.test_evaluated_at" not in client.get_run(outcome.parent_run_id).data.tags

    assert main(["evaluate", "eval-cars-cv", "--tracking-uri", mlflow_server]) == 0
    out = capsys.readouterr().out
    assert f"retrained on train+validation ({len(split.train_idx)} rows)" in out
    assert f"val_mae {best['best_val_mae']:.6g} (sd {best['val_mae_fold_std']:.2g} over folds)" in out
    parent = client.get_run(outcome.parent_run_id)
    assert parent.data.tags["hps.test_refit"] == "True" and parent.data.tags["hps.test_top_k"] == "2"
    model, prep = resolve_model(client, "models:/eval-cars-cv@champion", str(tmp_path / "champion"))
    assert prep.target_mean == pytest.approx(split.table.target.iloc[split.train_idx].mean())
    rows, target = split.test_rows()
    predicted = predict_frame(model, prep, rows)["prediction"].to_numpy()
    assert parent.data.metrics["test_mae"] == pytest.approx(float(np.mean(np.abs(predicted - target.to_numpy(float)))), rel=1e-5)
