"""``hps``: the command line. A thin shell over functions the tests call directly.

Exit codes: 0 success, 1 the search ran but failed (or some of its MLflow writes are pending or were given up),
2 bad input (config, data, tracking URI, existing search), 130 interrupted.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import sys
import warnings

from search.config.schema import DEFAULT_TRACKING_URI, ConfigError, load_config

EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 1, 2, 130


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> int:
    # One line, always: a key or value with a line break or control character in it (a YAML key can be "\n")
    # is shown escaped.
    one_line = "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in message)
    print(f"hps: error: {one_line}", file=sys.stderr)
    return code


def _overrides(args: argparse.Namespace) -> list[str]:
    """CLI flags are shorthands for ``--set`` overrides; explicit flags win over the file."""
    sets = list(args.set or [])
    for flag, key in (("name", "name"), ("num_samples", "search.num_samples"), ("max_epochs", "scheduler.max_epochs"),
                      ("tracking_uri", "tracking.uri"), ("warm_start", "search.warm_start")):
        value = getattr(args, flag, None)
        if value is not None:
            sets.append(f"{key}={value}")
    return sets


def cmd_validate(args: argparse.Namespace) -> int:
    """Check a config without running anything."""
    from search.config.capacity import check_fits
    from search.config.network import check_network

    cfg = load_config(args.config, _overrides(args))
    check_fits(cfg)  # the largest network the space allows, on this host (the data is sized when `hps run` loads it)
    # A user's network: its file, its name and its signature against the space (`hps run` then builds and runs it
    # on a few rows of the data before Ray starts).
    check_network(cfg)
    print(f"{args.config}: ok ({cfg.name}: {len(cfg.space)} space entries, {cfg.search.num_samples} trials, "
          f"{cfg.scheduler.type} up to {cfg.scheduler.max_epochs} epochs, metric {cfg.search.metric} ({cfg.search.mode}))")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Run a search and print its leaderboard."""
    from search.run.tuner import run_search  # Ray and MLflow load only when a search runs

    cfg = load_config(args.config, _overrides(args))
    folds = cfg.data.split.folds
    ranked = f"{cfg.search.metric} (mean over {folds} cross-validation folds)" if folds else cfg.search.metric
    if cfg.search.objectives:
        ranked += f" and {cfg.search.objectives[1].metric} (two objectives; ASHA and the ranking on the first)"

    def announce(split) -> None:  # printed once the config, data and storage have passed their checks
        print(f"search {cfg.name}: {cfg.search.num_samples} trials ({cfg.search.sampler}, {cfg.search.max_concurrent} "
              f"at a time), {cfg.scheduler.type} up to {cfg.scheduler.max_epochs} epochs, ranked by {ranked}; "
              f"tracking {cfg.tracking.uri}")
        print(f"data {cfg.data.source}: {_describe_data(split, detected=cfg.data.task == 'auto')}", flush=True)

    return _report_outcome(lambda: run_search(cfg, address=args.address, storage=args.storage,
                                              overwrite=args.overwrite, announce=announce,
                                              notify=lambda line: print(line, flush=True)))


def _describe_data(split, detected: bool) -> str:
    """``regression (detected), 258 train / 80 validation / 60 test rows; 8 rows without a target dropped``."""
    summary = split.summary()
    task = f"{summary['task']} (detected)" if detected else summary["task"]
    if split.folds is not None:
        rows = f"{summary['n_train']} development rows in {summary['n_folds']} folds / {summary['n_test']} test rows"
    else:
        rows = f"{summary['n_train']} train / {summary['n_val']} validation / {summary['n_test']} test rows"
    dropped = summary["n_dropped_missing_target"]
    return f"{task}, {summary['n_features']} features, {rows}" + (
        f"; {dropped} row(s) without a target dropped" if dropped else "")


def cmd_resume(args: argparse.Namespace) -> int:
    """Continue an interrupted or crashed search."""
    from search.run.tuner import resume_search

    print(f"resuming search {args.name}", flush=True)
    return _report_outcome(lambda: resume_search(args.name, storage=args.storage, tracking_uri=args.tracking_uri,
                                                 address=args.address))


def _report_outcome(execute) -> int:
    """Run a search (new or resumed); print its leaderboard, or why it ended early, with the right exit code."""
    from search.errors import SearchFailed, SearchInterrupted, TrackingBacklog
    from search.records.tracking import runs_view_url

    try:
        outcome = execute()
    except SearchInterrupted as exc:
        return _fail(str(exc), EXIT_INTERRUPTED)
    except (SearchFailed, TrackingBacklog) as exc:
        return _fail(str(exc), EXIT_FAILED)
    print()
    print(_format_board(outcome.leaderboard, limit=10))
    uri = outcome.tracking_uri
    print(f"\n{outcome.n_trials} trials; parent run {outcome.parent_run_id} at {uri}")
    runs = runs_view_url(uri, outcome.experiment_id)  # opens on the runs, not on MLflow's GenAI overview
    print(f"review: {runs}" if uri.startswith(("http://", "https://"))
          else f"review: mlflow ui --backend-store-uri {uri}, then open {runs}")
    if outcome.writes_given_up:  # the search is done but its MLflow record is not complete: say so, exit 1
        from search.records.writer import describe_given_up

        sys.stdout.flush()
        return _fail(f"{describe_given_up(outcome.writes_given_up)}; each is logged above and counted in the "
                     "hps.writes_given_up tag of the parent run", EXIT_FAILED)
    return 0


def cmd_trials(args: argparse.Namespace) -> int:
    """Print (or export) the leaderboard of a search."""
    from search.records.connection import connect
    from search.records.leaderboard import find_search_run, leaderboard

    if args.csv and not os.path.isdir(os.path.dirname(os.path.abspath(args.csv))):
        return _fail(f"cannot write {args.csv!r}: its folder does not exist")
    client = connect(args.tracking_uri, existing=True)
    board = leaderboard(client, find_search_run(client, args.name))
    if args.csv:
        board.to_csv(args.csv, index=False)
        print(f"wrote {len(board)} trials to {args.csv}")
    else:
        print(_format_board(board, limit=args.limit))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Evaluate the best trial of a search on its held-out test split and register it."""
    from search.review.evaluate import describe_member_value, evaluate_search

    ev = evaluate_search(args.tracking_uri, args.name, metric=args.metric, force=args.force,
                         register_as=args.register_as, top_k=args.top_k, refit=args.refit, pick=args.pick)
    if len(ev.members) == 1:
        print(f"chose trial {ev.selection}")
    else:
        metric = ev.metric
        fewer = f" (of {ev.top_k} asked for: only {len(ev.members)} trials have a result)" if ev.top_k > len(ev.members) else ""
        print(f"chose the mean of the top {len(ev.members)} trials by {metric}{fewer}:")
        for member in ev.members:
            print(f"  trial {member['trial']}: {metric} {describe_member_value(member, metric)}")
        if ev.refit:
            print(f"  each retrained on train+validation ({ev.n_refit} rows) for that many epochs")
    print(f"test set: {ev.n_test} rows, never seen during the search")
    for key, value in ev.metrics.items():
        print(f"  {key:<15} {value:.4f}")
    print(f"logged on the search's parent run: test_* metrics, {', '.join(ev.artifacts)}")
    print(f"registered: {ev.registered}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Predict rows of a CSV with a registered model, a run's model or a search's best model."""
    from search.review.predict import predict_file

    n = predict_file(args.tracking_uri, args.model, args.input, args.output)
    print(f"wrote {n} predictions to {args.output}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Regenerate the review plots and leaderboard CSV of a search on its parent run."""
    from mlflow.tracking import MlflowClient

    from search.records.connection import connect
    from search.records.leaderboard import find_search_run, recorded_config
    from search.review.report import write_report

    client: MlflowClient = connect(args.tracking_uri, existing=True)
    parent = find_search_run(client, args.name)
    written = write_report(client, parent, recorded_config(client, parent))
    print(f"logged on run {parent.info.run_id} under report/: {', '.join(written) or 'no plots (no finished trials)'}")
    return 0


def _format_board(board, limit: int | None = None) -> str:
    if board.empty:
        return "(no trials)"
    shown = board.drop(columns=["run_id"]).head(limit) if limit else board.drop(columns=["run_id"])
    shown.columns = [c.removeprefix("param.") for c in shown.columns]
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.float_format", "{:.4g}".format):
        return shown.to_string(index=False)


def build_parser() -> argparse.ArgumentParser:
    """The ``hps`` argument parser with its subcommands."""
    parser = argparse.ArgumentParser(prog="hps", description="Hyperparameter search for PyTorch MLPs: Optuna + Ray Tune + MLflow.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run a search", description="Run the search a config describes.")
    run.add_argument("config", help="YAML config file")
    run.add_argument("--name", help="search name (default: the config's name)")
    run.add_argument("--num-samples", type=int, help="number of trials")
    run.add_argument("--max-epochs", type=int, help="epochs per trial at most")
    run.add_argument("--tracking-uri", help="MLflow tracking URI (default: the config's, else sqlite:///mlruns.db)")
    run.add_argument("--address", help="address of a running Ray cluster to join (e.g. auto or HOST:6379)")
    run.add_argument("--storage", help="folder or s3:// URI for Ray's experiment state and checkpoints (default: ./hps-runs)")
    run.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field, e.g. scheduler.type=fifo")
    run.add_argument("--overwrite", action="store_true", help="start over if a search of this name exists in storage")
    run.add_argument("--warm-start", metavar="SEARCH",
                     help="start from an earlier search at this tracking URI: its top configurations first, its "
                          "trials told to the sampler (default: search.warm_start of the config)")
    run.set_defaults(func=cmd_run)

    resume = sub.add_parser("resume", help="continue an interrupted or crashed search",
                            description="Continue a search from its experiment state: finished trials are kept, "
                                        "unfinished ones resume from their checkpoints, MLflow runs are reused.")
    resume.add_argument("name", help="search name")
    resume.add_argument("--storage", help="the storage folder or URI the search was started with (default: ./hps-runs)")
    resume.add_argument("--tracking-uri", help="MLflow tracking URI (default: the one the search was started with)")
    resume.add_argument("--address", help="address of a running Ray cluster to join")
    resume.set_defaults(func=cmd_resume)

    trials = sub.add_parser("trials", help="show the leaderboard of a search", description="Leaderboard of a search, best first.")
    trials.add_argument("name", help="search name")
    trials.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI))
    trials.add_argument("--csv", metavar="FILE", help="write the whole leaderboard to a CSV file")
    trials.add_argument("--limit", type=int, default=None, help="show only the top N trials")
    trials.set_defaults(func=cmd_trials)

    tracking_default = os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)
    evaluate = sub.add_parser("evaluate", help="evaluate the best trial once on the held-out test set",
                              description="Pick the best trial by validation, evaluate it on the test split, "
                                          "log the results and register the model with alias 'champion'.")
    evaluate.add_argument("name", help="search name")
    evaluate.add_argument("--tracking-uri", default=tracking_default)
    evaluate.add_argument("--metric", help="validation metric to pick the trial by (default: the search's)")
    evaluate.add_argument("--top-k", type=int, metavar="K",
                          help="average the K best trials by validation (default: evaluate.top_k of the config, 1)")
    evaluate.add_argument("--refit", action=argparse.BooleanOptionalAction, default=None,
                          help="retrain the chosen configuration(s) on train+validation before the test "
                               "(default: evaluate.refit of the config; on for a cross-validated search, else off)")
    evaluate.add_argument("--pick", metavar="RULE",
                          help="two-objective searches: the member of the Pareto front to evaluate: best (the best "
                               "first objective, the default) or smallest-within:X (the best second objective among "
                               "members within X points of the best first objective; points: percentage points for "
                               "accuracy, F1, R2, else the metric's units)")
    evaluate.add_argument("--force", action="store_true", help="evaluate again although the test set was already used")
    evaluate.add_argument("--register-as", help="Model Registry name (default: tracking.registered_model or the search name)")
    evaluate.set_defaults(func=cmd_evaluate)

    predict = sub.add_parser("predict", help="predict rows of a CSV file", description="Predict raw rows with a model.")
    predict.add_argument("model", help="models:/NAME@champion, runs:/RUN_ID/model, or a search name")
    predict.add_argument("input", help="CSV with the training table's feature columns")
    predict.add_argument("-o", "--output", required=True, help="CSV to write predictions to")
    predict.add_argument("--tracking-uri", default=tracking_default)
    predict.set_defaults(func=cmd_predict)

    report = sub.add_parser("report", help="regenerate a search's review plots", description="Regenerate review plots.")
    report.add_argument("name", help="search name")
    report.add_argument("--tracking-uri", default=tracking_default)
    report.set_defaults(func=cmd_report)

    validate = sub.add_parser("validate", help="check a config without running it", description="Check a config file.")
    validate.add_argument("config", help="YAML config file")
    validate.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field")
    validate.set_defaults(func=cmd_validate)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``hps`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is first imported
    warnings.filterwarnings("ignore", category=FutureWarning)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # a "View run" line per ended trial
    from search.errors import USER_ERRORS

    try:
        return args.func(args)
    except ConfigError as exc:
        return _fail(f"config: {exc}")
    except USER_ERRORS as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED)


def console_main() -> None:
    """The ``hps`` console script: :func:`main`, then every exit handler (Ray's shutdown among them), then the
    process ends without the interpreter's teardown of torch, Ray and MLflow modules, which took ~2 s after
    every command while nothing was left to write."""
    code = main()
    atexit._run_exitfuncs()  # noqa: SLF001 - the documented handlers, run now instead of during teardown
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    console_main()
