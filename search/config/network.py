"""A config's own network, checked before anything starts: its builder's code is read once here (what every trial,
model folder and served model then carries), its signature is held against the space, and, once the data is
loaded, the network is built and run forward and backward on a handful of rows at the space's two corners."""

from __future__ import annotations

from typing import Any

from search.config.schema import CategoricalParam, Distribution, FloatParam, HpsConfig, IntParam
from trainables.network import BuilderSignature, NetworkCode, check_space_names, read_network_code

__all__ = ["check_network", "network_code", "space_corners"]


def network_code(cfg: HpsConfig) -> NetworkCode | None:
    """The code of ``cfg``'s network (None: the built-in MLP). A file builder's path is the one the config
    resolved (beside the config file; relative ones against the working directory)."""
    if cfg.model is None:
        return None
    return read_network_code(cfg.model.builder, ".", cfg.model.input_shape)


def check_network(cfg: HpsConfig, split=None) -> NetworkCode | None:
    """Read and check ``cfg``'s network; with the loaded ``split``, also build it at the space's two corners and run
    it on a few training rows. Raises :class:`trainables.network.NetworkError` (one line, exit 2) on the first
    problem: a missing file or name, a space entry nobody takes, a required parameter without a value, a builder
    that raises, an output of the wrong shape."""
    code = network_code(cfg)
    if code is None:
        return None
    check_space_names(code, BuilderSignature.of(code.load()), cfg.space)
    if split is not None:
        # torch loads here, and only for a search of the user's own network (the MLP's driver never imports it).
        from trainables.network import dry_run
        from trainables.train import data_architecture

        data = split.trial_data()
        for params in space_corners(cfg.space):
            dry_run(data_architecture(params, data, code.to_dict()), data.x_train)
    return code


def space_corners(space: dict[str, Any]) -> list[dict[str, Any]]:
    """Two configurations at the extremes of the space: every range at its low end (first choice), then at its high
    end (last choice). A network that builds and runs at both is unlikely to fail in between."""
    corners = []
    for end in (0, -1):
        corners.append({name: _corner_value(spec, end) for name, spec in space.items()})
    return corners


def _corner_value(spec: Any, end: int) -> Any:
    if isinstance(spec, (IntParam, FloatParam)):
        return (spec.low, spec.high)[end]
    if isinstance(spec, CategoricalParam):
        return spec.choices[end]
    assert not isinstance(spec, Distribution)
    return spec
