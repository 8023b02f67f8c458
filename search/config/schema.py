"""The search configuration: a YAML file validated by pydantic, with ``--set dotted.key=value`` overrides.

Every mistake a user can make in a config is reported as a :class:`ConfigError` naming the key and the
problem, before anything (Ray, MLflow, data loading) starts.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveInt,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

# Names and rules only (no torch, pandas or scikit-learn): `hps validate` answers in a fraction of a second.
from trainables.names import (
    CATEGORICAL_IMPUTE,
    DEFAULT_IMPUTE,
    LOSSES,
    MAX_CATEGORIES,
    MAX_COLUMNS,
    NUMERIC_IMPUTE,
    TASK_METRICS,
    TASKS,
    gpu_request_error,
    known_task,
    metric_mode,
    source_error,
    target_error,
)
from trainables.network import LOOP_PARAMS, builder_syntax_error, is_file_builder
from trainables.params import (
    HYPERPARAMETERS,
    PER_LAYER,
    default,
    value_error,
)

DEFAULT_TRACKING_URI = "sqlite:///mlruns.db"
SEARCH_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
# MLflow refuses "/" and ":" in registered model names; "@" would make models:/NAME@champion ambiguous.
REGISTERED_NAME_PATTERN = r"^[^/:@\s](?:[^/:@]*[^/:@\s])?$"
# Optuna samplers by name, the only list of them: search.run.searcher finds each one's class by its name (no optuna here).
Sampler = Literal["tpe", "random", "cmaes", "gp", "qmc", "nsgaii"]
SAMPLERS: tuple[str, ...] = get_args(Sampler)
# Samplers that search two objectives at once (Optuna's multi-objective support); cmaes, gp and qmc are refused.
MULTI_OBJECTIVE_SAMPLERS = ("tpe", "nsgaii", "random")
# A second objective that is not a validation metric: the trainable reports each network's parameter count.
STRUCTURAL_OBJECTIVES = ("n_params",)
ALL_METRICS = tuple(LOSSES) + tuple(sorted({m for ms in TASK_METRICS.values() for m in ms}))
MAX_SEED = 2**32 - 1
# The smallest ASHA reduction factor: keeps the rung count finite and small (see SchedulerConfig).
MIN_REDUCTION_FACTOR = 1.1


def check_members_have_models(top_k: int, log_models: str, what: str) -> None:
    """Averaging the ``top_k`` best trials needs each one's model (or, for a refit, its exact description) from
    MLflow: only ``log_models: all`` uploads them. Raises ValueError naming ``what`` otherwise."""
    if top_k > 1 and log_models != "all":
        raise ValueError(f"{what}: {top_k} averages the {top_k} best trials' models, which only tracking.log_models: "
                         f"all keeps (this search: {log_models}); keep them, or test the single best trial (1)")


def check_registered_name(name: str) -> str:
    """A Model Registry name MLflow accepts and a ``models:/NAME@champion`` URI can carry, else ValueError."""
    if not re.match(REGISTERED_NAME_PATTERN, name):
        raise ValueError(f"{name!r} cannot be a Model Registry name (no '/', ':' or '@', no blank at either end)")
    return name


def ruled_by(rule: Callable[[Any], str | None]) -> AfterValidator:
    """A pydantic validator applying one of ``trainables.names``' rules (a message when the value is wrong, else
    None): the rule lives there, the config only points at it."""

    def check(value: Any) -> Any:
        error = rule(value)
        if error:
            raise ValueError(error)
        return value

    return AfterValidator(check)


Scalar = Union[StrictBool, StrictInt, StrictFloat, StrictStr]


class ConfigError(ValueError):
    """A config problem, phrased as ``<dotted.key>: <what is wrong>``."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}" if key else problem)
        self.key = key


class _Strict(BaseModel):
    # Unknown keys are errors: a typo like `lerning_rate` must not be silently ignored.
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class _Param(_Strict):
    """Fields every distribution shares."""

    per_layer: bool = False  # one value per hidden layer: units_0 .. units_{n_layers-1}
    if_: dict[str, Union[Scalar, list[Scalar]]] | None = Field(default=None, alias="if")  # only sampled when these hold


class IntParam(_Param):
    """``{type: int, low, high, step?, log?}`` → ``optuna.distributions.IntDistribution``."""

    type: Literal["int"]
    low: StrictInt
    high: StrictInt
    step: PositiveInt = 1
    log: bool = False

    @model_validator(mode="after")
    def _check_range(self) -> IntParam:
        _check_bounds(self.low, self.high, self.log)
        if self.log and self.step != 1:
            raise ValueError("step must be 1 when log is true")
        return self


class FloatParam(_Param):
    """``{type: float, low, high, step?, log?}`` → ``optuna.distributions.FloatDistribution``."""

    type: Literal["float"]
    # Finite bounds only: Optuna would sample inf or NaN from an infinite range.
    low: float = Field(allow_inf_nan=False)
    high: float = Field(allow_inf_nan=False)
    step: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    log: bool = False

    @model_validator(mode="after")
    def _check_range(self) -> FloatParam:
        _check_bounds(self.low, self.high, self.log)
        if self.log and self.step is not None:
            raise ValueError("step cannot be combined with log: true")
        return self


class CategoricalParam(_Param):
    """``{type: categorical, choices: [...]}`` → ``optuna.distributions.CategoricalDistribution``."""

    type: Literal["categorical"]
    choices: list[Scalar] = Field(min_length=1)


def _check_bounds(low: float, high: float, log: bool) -> None:
    if low >= high:
        raise ValueError(f"low ({low}) must be < high ({high})")
    if log and low <= 0:
        raise ValueError(f"log: true needs low > 0 (got {low})")


ParamSpec = Annotated[Union[IntParam, FloatParam, CategoricalParam], Field(discriminator="type")]
Distribution = (IntParam, FloatParam, CategoricalParam)


class SplitConfig(_Strict):
    """Fractions of the rows held out for validation and test; the rest is training data.

    ``folds: K`` replaces the one validation split by K-fold cross-validation: the rows outside the test split are
    cut into K folds, each trial trains K models (each validated on one fold, preprocessing fitted on the other
    K-1) and reports their mean validation metrics every epoch; ``val`` is then not used. A trial is then judged on all those rows instead of
    a ``val`` fraction of them, at K times the training cost: worth it on small tables, where a few dozen validation
    rows pick the best of many trials partly by luck.
    """

    val: float = Field(default=0.15, gt=0, lt=1)
    test: float = Field(default=0.15, gt=0, lt=1)
    seed: int = Field(default=0, ge=0, le=MAX_SEED)  # NumPy and scikit-learn take seeds in [0, 2**32)
    folds: int | None = Field(default=None, ge=2, le=20)

    @model_validator(mode="after")
    def _leave_training_rows(self) -> SplitConfig:
        held_out, what = (self.test, "test") if self.folds else (self.val + self.test, "val + test")  # folds: no val
        if held_out >= 0.9:
            raise ValueError(f"{what} = {held_out:g} leaves too little training data (must be < 0.9)")
        return self


class ImputeConfig(_Strict):
    """How missing feature values are filled (statistics of the training split only)."""

    numeric: Literal[NUMERIC_IMPUTE] = DEFAULT_IMPUTE["numeric"]
    categorical: Literal[CATEGORICAL_IMPUTE] = DEFAULT_IMPUTE["categorical"]  # missing: a category of its own


class DataConfig(_Strict):
    """Where the data comes from, which columns are used and what task it is.

    ``source`` is ``sklearn:NAME``, ``csv:PATH``, ``parquet:PATH`` (both need ``target``), ``npz:PATH`` (arrays
    X, y) or ``idx:DIR`` (MNIST-style IDX files). Relative paths are resolved against the working directory;
    files are checked when the data is loaded, so a config can be validated where its data is not.
    """

    source: Annotated[str, ruled_by(source_error)]
    task: Literal[("auto", *TASKS)] = "auto"
    target: str | None = Field(default=None, validate_default=True)  # the column to predict (csv, parquet)
    features: list[str] | None = Field(default=None, min_length=1)  # default: every column but target and drop
    drop: list[str] | None = None  # columns that are not features (ids, names, leaks)
    impute: ImputeConfig = ImputeConfig()
    split: SplitConfig = SplitConfig()

    @field_validator("target")
    @classmethod
    def _target_for_tables(cls, target: str | None, info: ValidationInfo) -> str | None:
        error = target_error(str(info.data.get("source", "")), target)
        if error:
            raise ValueError(error)
        return target


class Objective(_Strict):
    """One objective of a two-objective search: a reported metric and its direction (inferred when left out)."""

    metric: str
    mode: Literal["min", "max"] | None = None

    @field_validator("metric")
    @classmethod
    def _known_objective(cls, metric: str) -> str:
        if metric not in ALL_METRICS + STRUCTURAL_OBJECTIVES:
            raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(ALL_METRICS + STRUCTURAL_OBJECTIVES)}")
        return metric

    @model_validator(mode="after")
    def _natural_mode(self) -> Objective:
        natural = metric_mode(self.metric)  # n_params: min
        if self.mode is not None and self.mode != natural:
            direction = "maximized" if natural == "max" else "minimized"
            raise ValueError(f"{self.metric} is {direction}; mode must be {natural}")
        self.mode = natural
        return self


class SearchConfig(_Strict):
    """How configurations are chosen (Optuna sampler) and what they are judged by."""

    sampler: Sampler = "tpe"
    seed: int | None = Field(default=0, ge=0, le=MAX_SEED)  # Optuna's samplers seed NumPy: [0, 2**32)
    metric: str = "val_loss"
    mode: Literal["min", "max"] | None = None  # default: min for losses/errors, max for accuracy/F1/R²
    num_samples: PositiveInt = 50
    max_concurrent: PositiveInt = 4
    # What a seed fixes: told as trials finish, the sampler's history depends on which of the max_concurrent running
    # trials ends first, so two runs of one config differ once max_concurrent > 1. true: trials are told in the
    # order they were asked and trial i waits until trials 0..i-max_concurrent are told (a slow trial holds new ones
    # back), so FIFO searches repeat exactly; ASHA's stop decisions still follow arrival order (max_concurrent: 1
    # repeats any search). Off by default: it costs throughput for a repeatability most searches do not need.
    tell_in_order: StrictBool = False
    # Retries (from the last checkpoint) of a trial whose worker died. At most 100: a trial that fails every time
    # would otherwise be retried for ever.
    max_failures: int = Field(default=2, ge=0, le=100)
    # Two objectives searched together (Optuna's multi-objective samplers); the first is also search.metric: ASHA,
    # the leaderboard and `hps evaluate --pick best` rank by it. None: a single-objective search on search.metric.
    objectives: list[Objective] | None = None
    # Start from an earlier search (its name at this tracking URI): its top warm_start_top_k configurations are
    # tried first, and the sampler is told all of its finished trials that fit this space. `hps run --warm-start` wins.
    warm_start: Annotated[str, Field(pattern=SEARCH_NAME_PATTERN, max_length=100)] | None = None
    warm_start_top_k: int = Field(default=3, ge=0, le=100)

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, metric: str) -> str:
        if metric not in ALL_METRICS:
            raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(ALL_METRICS)}")
        return metric

    @field_validator("mode")
    @classmethod
    def _mode_matches_metric(cls, mode: str | None, info: ValidationInfo) -> str | None:
        metric = info.data.get("metric")
        natural = metric_mode(metric) if metric is not None else None
        if mode is not None and metric is not None and mode != natural:
            raise ValueError(f"{metric} is {'maximized' if natural == 'max' else 'minimized'}; mode must be {natural}")
        return mode

    @model_validator(mode="after")
    def _infer_mode(self) -> SearchConfig:
        if self.objectives is not None:
            self._check_objectives()
        if self.mode is None:
            self.mode = metric_mode(self.metric)
        return self

    def _check_objectives(self) -> None:
        """Exactly two objectives, a first one that is a metric ASHA can compare, a sampler that searches both;
        search.metric/mode become the first objective's."""
        objectives = self.objectives or []
        if len(objectives) != 2:
            raise ValueError(f"objectives: exactly two are supported (got {len(objectives)}); a single objective "
                             "is search.metric")
        first, second = objectives
        if first.metric in STRUCTURAL_OBJECTIVES:
            raise ValueError(f"objectives: the first objective must be a trained metric (ASHA stops on it), not "
                             f"{first.metric}; put {first.metric} second")
        if first.metric == second.metric:
            raise ValueError(f"objectives: {first.metric} is given twice")
        if "metric" in self.model_fields_set and self.metric != first.metric:
            raise ValueError(f"objectives: search.metric ({self.metric}) must be left out or be the first objective "
                             f"({first.metric})")
        if self.sampler not in MULTI_OBJECTIVE_SAMPLERS:
            raise ValueError(f"sampler: {self.sampler} cannot search two objectives; use one of "
                             f"{', '.join(MULTI_OBJECTIVE_SAMPLERS)}")
        self.metric, self.mode = first.metric, first.mode

    @property
    def objective_pairs(self) -> list[tuple[str, str]]:
        """``[(metric, mode), ...]``: the two objectives, or the one search.metric."""
        if self.objectives:
            return [(o.metric, o.mode or metric_mode(o.metric)) for o in self.objectives]
        return [(self.metric, self.mode or metric_mode(self.metric))]


class SchedulerConfig(_Strict):
    """Which trials stop early: ASHA (successive halving at rungs) or FIFO (every trial runs max_epochs)."""

    type: Literal["asha", "fifo"] = "asha"
    max_epochs: PositiveInt = 50
    grace_period: PositiveInt = 2  # ASHA never stops a trial before this many epochs
    # ASHA's rungs are grace_period x reduction_factor^k below max_epochs: a factor just above 1 made ~10^16 of
    # them (Tune's scheduler and asha_rungs spun for ever). From 1.1 on there are at most ~100 rungs per 10^4 epochs.
    reduction_factor: float = Field(default=3, ge=MIN_REDUCTION_FACTOR, allow_inf_nan=False)
    # Early stopping inside each trial: stop once the best search.metric is this many epochs old (None: off).
    # Works with either scheduler (with ASHA, whichever stops a trial first wins); the trial keeps its best epoch's
    # weights and is told to Optuna as pruned. Off by default: ASHA already stops the trials that fall behind.
    patience: int | None = None

    @field_validator("patience", mode="before")
    @classmethod
    def _patience_in_epochs(cls, patience: Any) -> int | None:
        if patience is not None and (isinstance(patience, bool) or not isinstance(patience, int) or patience < 1):
            raise ValueError(f"must be a whole number of epochs >= 1 (or left out: no patience), got {patience!r}")
        return patience

    @field_validator("grace_period")
    @classmethod
    def _grace_within_budget(cls, grace_period: int, info: ValidationInfo) -> int:
        max_epochs = info.data.get("max_epochs")
        if max_epochs is not None and grace_period > max_epochs:
            raise ValueError(f"grace_period ({grace_period}) must be <= max_epochs ({max_epochs})")
        return grace_period


class ResourcesConfig(_Strict):
    """Logical resources per trial; fractional GPUs share a device between trials."""

    # Ray counts resources in steps of 0.0001: a smaller share cannot be scheduled (and would divide the host's CPUs
    # into an infinite number of trials).
    cpus_per_trial: float = Field(default=1, ge=0.0001, allow_inf_nan=False)
    gpus_per_trial: Annotated[float, Field(ge=0), ruled_by(gpu_request_error)] = 0
    # Packed trials: up to this many compatible trials (same depth, activation, norm, optimizer and batch size;
    # widths in one bucket) train together in one worker as one stacked computation (search.run.packing.servers). Each stays a
    # trial in every sense (its own Optuna trial, MLflow run, checkpoint and ASHA decisions). The workers are
    # ceil(search.max_concurrent / pack), each holding cpus_per_trial CPUs (and gpus_per_trial GPU). 1: off.
    pack: int = Field(default=1, ge=1, le=64)


class TrackingConfig(_Strict):
    """Where runs are recorded (an MLflow tracking URI) and which trial models are uploaded."""

    uri: str = Field(default_factory=lambda: os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI))
    experiment: str | None = None  # default: the search name
    log_models: Literal["all", "best", "none"] = "all"
    # Model Registry name for `hps evaluate` (default: the search name)
    registered_model: Annotated[str, AfterValidator(check_registered_name)] | None = None
    # How long the end of a search waits for an unreachable tracking server before saving the pending writes
    # to a file (replayed by `hps resume`). Training itself never waits for the server.
    outage_wait_s: float = Field(default=300, ge=0, allow_inf_nan=False)
    # Draw the review plots (Optuna's plots, validation curves) on the parent run when a search ends: about 2 s of
    # CPU on a small search. false writes only leaderboard.csv; `hps report NAME` draws them later.
    review_plots: bool = True


class TrainingConfig(_Strict):
    """How each trial trains, beyond the searched hyperparameters."""

    # Epochs between checkpoints; the last epoch and ASHA's decision epochs are always checkpointed (with the best
    # epoch's weights), so a stopped trial keeps its best weights. Every epoch made 12 FIFO digits trials take 54 s
    # instead of 32 s here (Tune snapshots the experiment whenever num_to_keep checkpoints rotate); a resumed trial
    # repeats at most 4 epochs.
    checkpoint_every: PositiveInt = 5
    # bf16 autocast of the training steps when a trial runs on a GPU (validation and metrics stay fp32). Off by
    # default: a small MLP's step is bound by kernel launches, and autocast adds casts (~27 -> ~42 kernels a digits
    # step), so it pays only for wide layers; never measured on a GPU yet (docs/gpu.md).
    amp: bool = False
    # torch.compile each trial's model: true (inductor) or "reduce-overhead" (CUDA graphs on a GPU, one launch per
    # step). Compiling takes seconds per trial (~20 s on a CPU), so it only pays on long trials.
    compile: bool | Literal["reduce-overhead"] = False
    # A trial reports to Tune at most this often: epochs shorter than this are sent together with the next report
    # (checkpoints, ASHA's rung epochs and the last epoch are never held back). MLflow still gets every epoch.
    # Each report is a round trip through Tune's controller; per-epoch reports of ~30 ms digits epochs cost ~20%.
    report_interval_s: NonNegativeFloat = Field(default=1.0, allow_inf_nan=False)


class EvaluateConfig(_Strict):
    """What `hps evaluate` takes to the test set once the search is over."""

    # 1: the single best trial by validation. k > 1: the average prediction of the k best trials (mean value, or
    # mean class probabilities). On small tables the single best of many trials is picked on few validation rows
    # and is partly luck; averaging the top few trials is steadier. Chosen before the test set is opened.
    top_k: PositiveInt = 1
    # Retrain each chosen configuration on training + validation rows (preprocessing fitted again on them) for the
    # number of epochs at which its validation value was best, then evaluate that: the course notes' "recombine the
    # sets and retrain, but don't change it according to test metrics" (the test split still stays out). With
    # nothing held out there is no early stopping on the refit; the epoch count comes from the search.
    # Default: true when the search cross-validates (data.split.folds), whose trials' models each saw only part
    # of the development rows; false otherwise.
    refit: bool | None = None


class ModelConfig(_Strict):
    """The user's own network (docs/networks.md): the class or function that builds it, in a file beside the config
    (``models/cnn.py:DigitsCNN``, resolved against the config's folder) or an importable module
    (``mypkg.nets:build``). Without this section every trial trains the built-in MLP."""

    builder: Annotated[str, ruled_by(builder_syntax_error)]
    # Each row's flat feature columns reshaped to this before the network sees them ([1, 8, 8]: 8x8 one-channel
    # images); also passed to a builder that takes ``input_shape``.
    input_shape: list[PositiveInt] | None = Field(default=None, min_length=1, max_length=8)


class LimitsConfig(_Strict):
    """Upper bounds on what a config may ask for, so a typo (``units: 1000000``, ``num_samples: 1e9``) is refused
    at once instead of exhausting the machine. They are ceilings, not settings: raise one here when a search
    legitimately needs more (``limits: {max_units: 32768}``)."""

    max_units: PositiveInt = 8192  # widest hidden layer any space value may ask for
    max_layers: PositiveInt = 32  # most hidden layers (space.n_layers)
    max_trials: PositiveInt = 10_000  # search.num_samples
    max_epochs: PositiveInt = 10_000  # scheduler.max_epochs
    max_batch_size: PositiveInt = 1_000_000  # space.batch_size
    max_columns: PositiveInt = MAX_COLUMNS  # feature columns of the data (MNIST has 784)
    max_categories: PositiveInt = MAX_CATEGORIES  # distinct values of one text (categorical) feature column (one-hot)
    # Share of this host's memory the trials running at once may take together (the rest: Ray's object store
    # share aside, the driver, the OS). `hps run` and `hps validate` refuse a search whose largest network and
    # data need more; see search/config/capacity.py.
    memory_fraction: float = Field(default=0.8, gt=0, le=1)


class HpsConfig(_Strict):
    """A whole search: data, search space, search strategy, scheduler, resources, tracking, training, evaluation."""

    name: str = Field(pattern=SEARCH_NAME_PATTERN, max_length=100)
    data: DataConfig
    space: dict[str, Union[ParamSpec, Scalar]] = Field(min_length=1)
    search: SearchConfig = SearchConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    resources: ResourcesConfig = ResourcesConfig()
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    training: TrainingConfig = TrainingConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    limits: LimitsConfig = LimitsConfig()
    model: ModelConfig | None = None  # a user's network; None: the built-in MLP

    @model_validator(mode="after")
    def _within_limits(self) -> HpsConfig:
        limits = self.limits
        for key, value, cap, name in (("search.num_samples", self.search.num_samples, limits.max_trials, "max_trials"),
                                      ("scheduler.max_epochs", self.scheduler.max_epochs, limits.max_epochs,
                                       "max_epochs")):
            if value > cap:
                raise ValueError(f"{key}: {value} is above the limit of {cap} (raise limits.{name} if you mean it)")
        return self

    @model_validator(mode="after")
    def _refit_cross_validated(self) -> HpsConfig:
        folds = self.data.split.folds
        if folds and self.evaluate.refit is False:
            raise ValueError(f"evaluate.refit: false cannot go with data.split.folds: {folds}: each trial's model was "
                             f"trained on {folds - 1} of {folds} folds; what is tested is retrained on all of them")
        if self.evaluate.refit is None:  # a copy: the default EvaluateConfig instance may be shared
            self.evaluate = self.evaluate.model_copy(update={"refit": folds is not None})
        return self

    @model_validator(mode="after")
    def _packs_need_one_split(self) -> HpsConfig:
        share = self.resources.cpus_per_trial / self.resources.pack
        if self.resources.pack > 1 and share < 0.0001:
            raise ValueError(f"resources.cpus_per_trial / resources.pack = {share:g}: each packed trial holds that "
                             "share of a CPU, and Ray counts CPUs in steps of 0.0001 (raise cpus_per_trial or lower "
                             "pack)")
        if self.resources.pack > 1 and self.data.split.folds:
            raise ValueError(f"resources.pack: {self.resources.pack} cannot go with data.split.folds: "
                             f"{self.data.split.folds}: a cross-validated trial trains a model per fold (set pack: 1)")
        if self.resources.pack > 1 and self.model is not None:
            raise ValueError(f"resources.pack: {self.resources.pack} cannot go with model.builder: packing stacks "
                             "the built-in MLP only (set pack: 1)")
        if self.resources.pack > 1 and self.training.compile:
            raise ValueError(f"resources.pack: {self.resources.pack} cannot go with training.compile: packed trials "
                             "train as one stacked computation, which is not compiled (set pack: 1 or compile: false)")
        return self

    @model_validator(mode="after")
    def _members_have_models(self) -> HpsConfig:
        check_members_have_models(self.evaluate.top_k, self.tracking.log_models, "evaluate.top_k")
        return self

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment or self.name

    @property
    def training_seed(self) -> int:
        """What every trial (and its refit) derives its initialization and batch order from; ``search.seed: null``
        randomizes the sampler only."""
        return self.search.seed or 0


def _check_space(space: dict, limits: LimitsConfig | None = None, custom_network: bool = False) -> None:
    """Checks that need the whole space: known names, legal values, ``if:`` and ``per_layer`` references, and the
    ``limits`` on sizes. With a user's network only the loop's own hyperparameters are checked here; the others
    are the builder's, checked against its signature (search.config.network) once its code is read."""
    limits = limits or LimitsConfig()
    caps = {"units": ("max_units", limits.max_units), "n_layers": ("max_layers", limits.max_layers),
            "batch_size": ("max_batch_size", limits.max_batch_size)}
    for name, spec in space.items():
        key = f"space.{name}"
        if custom_network and name not in LOOP_PARAMS:
            if isinstance(spec, Distribution) and spec.per_layer:
                raise ConfigError(f"{key}.per_layer", "per_layer is for the built-in MLP; a builder takes one value")
            _check_references(space, name, spec)
            continue
        if name not in HYPERPARAMETERS:
            raise ConfigError(key, f"unknown hyperparameter; known: {', '.join(HYPERPARAMETERS)}")
        for field, value in _space_values(spec):
            error = value_error(name, value)
            if error:
                raise ConfigError(f"{key}{field}", error)
            if name in caps and value > caps[name][1]:
                raise ConfigError(f"{key}{field}", f"{value} is above the limit of {caps[name][1]} "
                                  f"(raise limits.{caps[name][0]} if you mean it)")
        if not isinstance(spec, Distribution):
            continue
        if spec.per_layer and name not in PER_LAYER:
            raise ConfigError(f"{key}.per_layer", f"only {', '.join(PER_LAYER)} can be set per layer")
        _check_references(space, name, spec)
    # Batch norm's statistics need two rows a batch: a space that can pair batch_size 1 with it is refused here
    # (training once skipped such batches and reported a training loss of 0 for a model it never trained).
    if not custom_network and _can_take(space, "batch_size", 1) and _can_take(space, "norm", "batch"):
        raise ConfigError("space.batch_size", "batch_size 1 cannot go with norm: batch (batch norm needs at least 2 "
                          "rows a batch); raise batch_size's lower bound or leave batch norm out of the space")
    sample_order(space)


def _check_references(space: dict, name: str, spec: Any) -> None:
    """A distribution's ``if:`` names other entries of the space."""
    if not isinstance(spec, Distribution):
        return
    for other in spec.if_ or {}:
        if other not in space:
            raise ConfigError(f"space.{name}.if", f"refers to {other!r}, which is not in the space")
        if other == name:
            raise ConfigError(f"space.{name}.if", "a parameter cannot depend on itself")


def _can_take(space: dict, name: str, value: Any) -> bool:
    """Whether some trial of ``space`` may get ``value`` for ``name`` (its default when the space leaves it out)."""
    spec = space.get(name, default(name))
    if isinstance(spec, CategoricalParam):
        return value in spec.choices
    if isinstance(spec, (IntParam, FloatParam)):
        return spec.low <= value <= spec.high
    return spec == value


def sample_order(space: dict[str, Any]) -> list[str]:
    """Distributions ordered so each comes after what it depends on (``n_layers`` and ``if:`` targets)."""
    deps = {
        name: set(spec.if_ or {}) | ({"n_layers"} & set(space) if spec.per_layer else set())
        for name, spec in space.items()
        if isinstance(spec, Distribution)
    }
    order: list[str] = []
    placed = set(space) - set(deps)  # constants are known from the start
    while deps:
        ready = [name for name, needs in deps.items() if needs <= placed]
        if not ready:
            raise ConfigError(f"space.{sorted(deps)[0]}.if", "conditions form a cycle")
        for name in ready:  # dict order: the order the user wrote them
            order.append(name)
            placed.add(name)
            del deps[name]
    return order


def _space_values(spec: Any) -> list[tuple[str, Any]]:
    """Values a space entry can produce, with the sub-key they come from (bounds are the extremes)."""
    if isinstance(spec, CategoricalParam):
        return [(".choices", c) for c in spec.choices]
    if isinstance(spec, (IntParam, FloatParam)):
        return [(".low", spec.low), (".high", spec.high)]
    return [("", spec)]


def _check_task_metric(cfg: HpsConfig) -> None:
    task = known_task(cfg.data.source, cfg.data.task)
    if task in TASKS and cfg.search.metric not in LOSSES + TASK_METRICS[task]:
        allowed = ", ".join(LOSSES + TASK_METRICS[task])
        raise ConfigError("search.metric", f"{cfg.search.metric} is not reported for {task}; use one of {allowed}")
    for index, (metric, _) in enumerate(cfg.search.objective_pairs if cfg.search.objectives else []):
        if task in TASKS and metric not in LOSSES + TASK_METRICS[task] + STRUCTURAL_OBJECTIVES:
            allowed = ", ".join(LOSSES + TASK_METRICS[task] + STRUCTURAL_OBJECTIVES)
            raise ConfigError(f"search.objectives.{index}.metric", f"{metric} is not reported for {task}; "
                              f"use one of {allowed}")
    if "loss" not in cfg.space:
        return
    if task in TASKS and task != "regression":
        raise ConfigError("space.loss", f"only regressions choose a loss; a {task} classifier trains with cross-entropy")
    # An MAE of 2.0 and an MSE of 2.0 say different things: with the loss searched, val_loss ranks nothing.
    if isinstance(cfg.space["loss"], Distribution) and cfg.search.metric in LOSSES:
        raise ConfigError("search.metric", f"{cfg.search.metric} is measured in each trial's own loss, so it cannot "
                          "rank trials that search the loss; use val_mae, val_rmse or val_r2")


def check_metric_for_task(cfg: HpsConfig, task: str) -> None:
    """Once the task is known (``task: auto`` resolved from the data), the metric must be one it reports."""
    _check_task_metric(cfg.model_copy(update={"data": cfg.data.model_copy(update={"task": task})}))


def parse_config(raw: Any) -> HpsConfig:
    """Validate a config mapping; raises :class:`ConfigError` on the first problem."""
    if not isinstance(raw, dict):
        raise ConfigError("", f"a config must be a YAML mapping, got {type(raw).__name__}")
    try:
        cfg = HpsConfig.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        raise ConfigError(_format_loc(error["loc"]), _format_msg(error)) from None
    _check_space(cfg.space, cfg.limits, custom_network=cfg.model is not None)
    _check_task_metric(cfg)
    return cfg


def _format_loc(loc: tuple) -> str:
    # pydantic puts union member tags ("int", "float", "str", ...) into the location; users never wrote those.
    tags = {"int", "float", "categorical", "bool", "str", "function-after[_check_range(), IntParam]"}
    parts = [str(p) for p in loc if not (isinstance(p, str) and (p in tags or p.startswith(("function-", "tagged-union"))))]
    return ".".join(parts)


def _format_msg(error: dict) -> str:
    msg = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return "unknown key"
    if error["type"] == "missing":
        return "required key is missing"
    if error["type"] == "union_tag_invalid" or error["type"] == "union_tag_not_found":
        return "a distribution needs type: int, float or categorical"
    return msg


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``dotted.key=value`` overrides (values parsed as YAML) to a raw config mapping, in place."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError("--set", f"expected dotted.key=value, got {item!r}")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        node = raw
        parts = key.strip().split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(".".join(parts[: depth + 1]), f"is a value, so {key} cannot be set")
            node = child
        node[parts[-1]] = value
    return raw


def load_raw(path: str | Path) -> dict:
    """Read a YAML config file into a mapping; file and syntax problems become one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("", f"config file {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError("", f"{path}: not UTF-8 text (byte {exc.start}); save the config as UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError("", f"{path}: {problem}{where}") from None
    if not isinstance(raw, dict):
        raise ConfigError("", f"{path}: a config must be a YAML mapping")
    return raw


def load_config(path: str | Path, overrides: list[str] | None = None) -> HpsConfig:
    """Load, override and validate a config file. A network builder's file is found beside the config file."""
    cfg = parse_config(apply_overrides(load_raw(path), overrides or []))
    return with_absolute_builder(cfg, Path(path).resolve().parent)


def with_absolute_builder(cfg: HpsConfig, base_dir: str | Path) -> HpsConfig:
    """``cfg`` with its builder file (if any, and relative) resolved against ``base_dir``: the resolved config is
    what the search records and `hps resume` reads back, from whatever folder it runs in."""
    if cfg.model is None or not is_file_builder(cfg.model.builder):
        return cfg
    location, _, attribute = cfg.model.builder.rpartition(":")
    builder = f"{Path(base_dir, location).resolve()}:{attribute}"
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"builder": builder})})


def config_to_yaml(cfg: HpsConfig) -> str:
    """The fully resolved config (defaults filled in), as YAML."""
    return yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=False)
