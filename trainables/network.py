"""A network the user writes: its builder (a class or function in a file, or in an importable module), how it is
called, and the module the training loop trains around it. No Ray, no MLflow.

A config names the builder (``model: {builder: models/cnn.py:DigitsCNN}``). The driver reads the builder's file
once (:func:`read_network_code`); its text travels with the trial settings to every worker, is recorded beside each
model's weights, and is what every process runs: the code a trial trained with is the code its model loads with,
wherever that is (another node, `hps predict` on another machine, MLflow's scoring server). A module builder
(``mypkg.nets:build``) is imported by name instead, so it must be installed wherever the model trains or loads;
its file is recorded all the same.

The builder is called with the data's shape under the names people use (``num_features``/``n_features``/
``in_features``; ``num_classes``/``n_classes``; ``n_outputs``/``num_outputs``/``out_features``; ``input_shape``) and
with the trial's hyperparameters its signature takes. :class:`UserNetwork` adapts what it returns to the loop: flat
feature rows reshaped to ``input_shape``, the first element of a tuple output (the course notes' ``(logits,
probas)``), and two logits of a binary task turned into the loop's one (their difference: exact).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import linecache
import math
import sys
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainables.names import DataError

# The training loop's own hyperparameters: with a builder, every other space entry must be one the builder takes.
LOOP_PARAMS = ("batch_size", "lr", "weight_decay", "momentum", "optimizer", "loss")
FEATURE_NAMES = ("num_features", "n_features", "in_features")
CLASS_NAMES = ("num_classes", "n_classes")
OUTPUT_NAMES = ("n_outputs", "num_outputs", "out_features")
INPUT_SHAPE_NAME = "input_shape"
SHAPE_NAMES = (*FEATURE_NAMES, *CLASS_NAMES, *OUTPUT_NAMES, INPUT_SHAPE_NAME)
CODE_DIR = "code"  # where a model folder keeps its builder's file


class NetworkError(DataError):
    """A builder that cannot train this search's data (missing, wrong signature, raises, wrong output): one line,
    reported as bad input (exit 2) before Ray starts."""


@dataclass(frozen=True)
class NetworkCode:
    """A builder and the code behind it, as recorded: what every process needs to call it."""

    builder: str  # as the config names it: "cnn.py:DigitsCNN" (file) or "mypkg.nets:build" (module)
    attribute: str  # the class or function in it
    filename: str  # the builder file's name ("cnn.py"), kept under code/ in each model folder
    source: str  # the file's text
    module: str | None = None  # importable module name, for module builders (else the file's text is run)
    input_shape: tuple[int, ...] | None = None  # what each row's flat features are reshaped to

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.source.encode()).hexdigest()

    def to_dict(self) -> dict:
        """JSON-ready form (the source included)."""
        return {"builder": self.builder, "attribute": self.attribute, "filename": self.filename, "source": self.source,
                "module": self.module, "input_shape": list(self.input_shape) if self.input_shape else None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NetworkCode:
        """Inverse of :meth:`to_dict`."""
        shape = data.get("input_shape")
        return cls(builder=data["builder"], attribute=data["attribute"], filename=data["filename"],
                   source=data["source"], module=data.get("module"), input_shape=tuple(shape) if shape else None)

    def load(self) -> Callable:
        """The builder itself: from the recorded text, or imported by module name."""
        if self.module is not None:
            try:
                module = importlib.import_module(self.module)
            except Exception as exc:  # noqa: BLE001 - whatever the module raises, the user needs one line
                raise NetworkError(f"model.builder {self.builder!r}: cannot import {self.module!r} here "
                                   f"({type(exc).__name__}: {_first_line(exc)})") from None
        else:
            module = _module_from_source(self.source, self.filename, self.sha256)
        builder = getattr(module, self.attribute, None)
        if not callable(builder):
            raise NetworkError(f"model.builder {self.builder!r}: {self.filename} has no class or function "
                               f"{self.attribute!r}")
        return builder


def is_file_builder(builder: str) -> bool:
    """Whether ``builder`` ("PATH.py:NAME" or "package.module:NAME") names a file rather than a module."""
    location = builder.rpartition(":")[0]
    return location.endswith(".py") or "/" in location or "\\" in location


def builder_syntax_error(builder: str) -> str | None:
    """Why ``builder`` is not of the form ``path/to/file.py:Name`` or ``package.module:name``, or None."""
    location, sep, attribute = builder.rpartition(":")
    if not sep or not location or not attribute.isidentifier():
        return (f"{builder!r} must be FILE.py:NAME (a file beside the config) or MODULE:NAME (an importable "
                "module), naming the class or function that builds the network")
    if not is_file_builder(builder) and not all(part.isidentifier() for part in location.split(".")):
        return f"{builder!r}: {location!r} is neither a .py file nor a module name"
    return None


def read_network_code(builder: str, base_dir: str | Path = ".", input_shape: Iterable[int] | None = None) -> NetworkCode:
    """Read the builder a config names: a file (relative to ``base_dir``, the config's folder) or a module that
    imports here. Raises :class:`NetworkError` when it cannot be found."""
    error = builder_syntax_error(builder)
    if error:
        raise NetworkError(f"model.builder: {error}")
    location, _, attribute = builder.rpartition(":")
    shape = tuple(int(n) for n in input_shape) if input_shape else None
    if is_file_builder(builder):
        path = Path(base_dir, location)
        if not path.is_file():
            raise NetworkError(f"model.builder {builder!r}: file {str(path)!r} does not exist")
        try:
            source = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise NetworkError(f"model.builder {builder!r}: cannot read {str(path)!r} ({_first_line(exc)})") from None
        return NetworkCode(builder, attribute, path.name, source, None, shape)
    try:
        spec = importlib.util.find_spec(location)
    except (ImportError, ValueError) as exc:
        raise NetworkError(f"model.builder {builder!r}: module {location!r} not found ({_first_line(exc)})") from None
    if spec is None or not spec.origin or not Path(spec.origin).is_file():
        raise NetworkError(f"model.builder {builder!r}: module {location!r} not found (is it installed, or on "
                           "PYTHONPATH?)")
    source = Path(spec.origin).read_text(encoding="utf-8", errors="replace")
    return NetworkCode(builder, attribute, Path(spec.origin).name, source, location, shape)


def _module_from_source(source: str, filename: str, sha256: str) -> types.ModuleType:
    """The builder file's text run as a module of its own, once per process and text (named by the text's
    ``sha256``, so two versions of one file never mix)."""
    name = f"hps_network_{sha256[:16]}"
    if name in sys.modules:
        return sys.modules[name]
    module = types.ModuleType(name)
    origin = f"<hps network {filename}>"
    module.__file__ = origin
    # Tracebacks and inspect.getsource show the builder's lines.
    linecache.cache[origin] = (len(source), None, source.splitlines(True), origin)
    sys.modules[name] = module  # before running it: dataclasses and pickle look the module up by name
    try:
        exec(compile(source, origin, "exec"), module.__dict__)  # noqa: S102 - the user's own network code
    except Exception as exc:  # noqa: BLE001 - a file that fails to run is a bad builder, said in one line
        del sys.modules[name]
        raise NetworkError(f"{filename} fails to run: {type(exc).__name__}: {_first_line(exc)}") from None
    return module


@dataclass(frozen=True)
class BuilderSignature:
    """The parameters a builder takes: all of them, those without a default, and whether it takes ``**kwargs``."""

    names: tuple[str, ...]
    required: tuple[str, ...]
    any_keyword: bool

    @classmethod
    def of(cls, builder: Callable) -> BuilderSignature:
        try:
            signature = inspect.signature(builder)
        except (TypeError, ValueError):  # a builtin without a signature: only keywords it may take are unknown
            return cls((), (), True)
        names, required, any_keyword = [], [], False
        for parameter in signature.parameters.values():
            if parameter.kind is inspect.Parameter.VAR_KEYWORD:
                any_keyword = True
            elif parameter.kind is not inspect.Parameter.VAR_POSITIONAL:
                names.append(parameter.name)
                if parameter.default is inspect.Parameter.empty:
                    required.append(parameter.name)
        return cls(tuple(names), tuple(required), any_keyword)

    def takes(self, name: str) -> bool:
        return name in self.names or self.any_keyword


def builder_arguments(signature: BuilderSignature, params: Mapping[str, Any]) -> dict:
    """The trial's hyperparameters this builder takes (the loop keeps its own unless the builder names them)."""
    return {k: v for k, v in params.items()
            if k in signature.names or (signature.any_keyword and k not in LOOP_PARAMS and k not in SHAPE_NAMES)}


def check_space_names(code: NetworkCode, signature: BuilderSignature, space_names: Iterable[str]) -> None:
    """Every space entry is the loop's or the builder's, and every builder parameter without a default gets a
    value (a shape or a space entry). Raises :class:`NetworkError` naming the first that is not."""
    space_names = list(space_names)
    for name in space_names:
        if name not in LOOP_PARAMS and not signature.takes(name):
            raise NetworkError(f"space.{name}: neither the training loop ({', '.join(LOOP_PARAMS)}) nor "
                               f"{code.attribute}({', '.join(signature.names)}) takes it")
    for name in signature.required:
        if name not in space_names and name not in SHAPE_NAMES:
            raise NetworkError(f"model.builder {code.builder!r}: parameter {name!r} has no default and no space "
                               f"entry (add space.{name}, or give it a default)")
    if INPUT_SHAPE_NAME in signature.required and code.input_shape is None:
        raise NetworkError(f"model.builder {code.builder!r} takes input_shape: declare model.input_shape (e.g. "
                           "[1, 8, 8] for 8x8 images)")


@dataclass(frozen=True)
class CustomArchitecture:
    """A user's network: its code, the data's shape and the builder's arguments (JSON-ready, like
    :class:`trainables.model.Architecture`)."""

    code: NetworkCode
    n_features: int
    n_outputs: int  # what the loop trains: classes for multiclass, 1 for binary and regression
    n_classes: int  # classes of the task (2 for binary; 1 for a regression)
    arguments: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"network": self.code.to_dict(), "n_features": self.n_features, "n_outputs": self.n_outputs,
                "n_classes": self.n_classes, "arguments": dict(self.arguments)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CustomArchitecture:
        return cls(NetworkCode.from_dict(data["network"]), int(data["n_features"]), int(data["n_outputs"]),
                   int(data["n_classes"]), dict(data.get("arguments", {})))

    def shape_arguments(self, signature: BuilderSignature) -> dict:
        """The data's shape under every name the builder takes (``**kwargs``: one name of each)."""
        values = {**dict.fromkeys(FEATURE_NAMES, self.n_features), **dict.fromkeys(CLASS_NAMES, self.n_classes),
                  **dict.fromkeys(OUTPUT_NAMES, self.n_outputs)}
        if self.code.input_shape is not None:
            values[INPUT_SHAPE_NAME] = list(self.code.input_shape)
        if signature.any_keyword and not signature.names:
            keep = {"n_features", "n_outputs", INPUT_SHAPE_NAME}
            return {k: v for k, v in values.items() if k in keep}
        return {k: v for k, v in values.items() if k in signature.names}

    def build(self):
        """The network, wrapped for the loop (:class:`UserNetwork`). Raises :class:`NetworkError` when the builder
        raises or returns something that is not a ``torch.nn.Module``."""
        from torch import nn

        builder = self.code.load()
        signature = BuilderSignature.of(builder)
        try:
            net = builder(**self.shape_arguments(signature), **self.arguments)
        except Exception as exc:  # noqa: BLE001 - the user's code: any failure is theirs to see in one line
            raise NetworkError(f"{self.code.attribute}({_call_text(self.arguments)}) raised "
                               f"{type(exc).__name__}: {_first_line(exc)}") from None
        if not isinstance(net, nn.Module):
            raise NetworkError(f"{self.code.attribute}(...) returned a {type(net).__name__}, not a torch.nn.Module")
        return make_user_network(net, self.code.input_shape, two_logits_to_one=self.n_classes == 2 and self.n_outputs == 1)


def make_user_network(net, input_shape: tuple[int, ...] | None, two_logits_to_one: bool):
    """``net`` behind the loop's interface (see the module docstring)."""
    from torch import nn

    class UserNetwork(nn.Module):
        """Reshapes flat rows to ``input_shape``, takes a tuple output's first element and, for a binary task, turns
        two logits (z0, z1) into the loop's one: z1 - z0, whose sigmoid is softmax's probability of class 1."""

        def __init__(self) -> None:
            super().__init__()
            self.net = net
            self.input_shape = input_shape
            self.two_logits_to_one = two_logits_to_one

        def forward(self, x):  # noqa: D102 - see the class docstring
            if self.input_shape is not None:
                x = x.reshape(x.shape[0], *self.input_shape)
            out = self.net(x)
            if isinstance(out, (tuple, list)):
                out = out[0]
            if self.two_logits_to_one and out.dim() == 2 and out.shape[1] == 2:
                out = out[:, 1:] - out[:, :1]
            return out

    return UserNetwork()


def dry_run(arch: CustomArchitecture, rows) -> None:
    """Build the network and run one forward and backward pass on a handful of ``rows`` (a float32 array of
    flat features); raises :class:`NetworkError` when it cannot, or when its output does not fit the task."""
    import torch

    x = torch.as_tensor(rows[: min(len(rows), 4)], dtype=torch.float32)
    # Before building: a builder given a shape the rows do not have would fail in a less telling way.
    if arch.code.input_shape is not None and math.prod(arch.code.input_shape) != x.shape[1]:
        raise NetworkError(f"model.input_shape {list(arch.code.input_shape)} holds {math.prod(arch.code.input_shape)} "
                           f"values, but the data has {x.shape[1]} features a row")
    model = arch.build()
    call = f"{arch.code.attribute}({_call_text(arch.arguments)})"
    try:
        model.train()
        out = model(x)
    except Exception as exc:  # noqa: BLE001 - the user's forward: any failure is said in one line
        raise NetworkError(f"{call}: forward pass on {tuple(x.shape)} rows failed: {type(exc).__name__}: "
                           f"{_first_line(exc)}") from None
    if not isinstance(out, torch.Tensor):
        raise NetworkError(f"{call}: forward returned a {type(out).__name__}, not a tensor (or a tuple starting "
                           "with one)")
    wanted = (x.shape[0], arch.n_outputs)
    if tuple(out.shape) != wanted:
        task = {1: "one output (binary or regression)"}.get(arch.n_outputs, f"{arch.n_outputs} classes")
        also = " or 2 logits" if arch.n_classes == 2 else ""
        raise NetworkError(f"{call}: output has shape {tuple(out.shape)} for {x.shape[0]} rows; this task needs "
                           f"{wanted} ({task}{also}): one row of outputs per input row")
    if not out.is_floating_point():
        raise NetworkError(f"{call}: output is {out.dtype}; logits or values must be floating point")
    try:
        out.float().sum().backward()
    except Exception as exc:  # noqa: BLE001
        raise NetworkError(f"{call}: backward pass failed: {type(exc).__name__}: {_first_line(exc)}") from None
    if not any(p.requires_grad for p in model.parameters()):
        raise NetworkError(f"{call}: the network has no trainable parameters")


def _call_text(arguments: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in arguments.items())


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
