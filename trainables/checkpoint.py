"""Trial checkpoints and model artifacts on disk, without pickle.

A checkpoint directory holds ``state.pt`` (weights, optimizer state, epoch, best-so-far bookkeeping) and a
``model/`` folder: the best epoch's weights (``weights.pt``), ``model.json`` (architecture + preprocessing) and, for
a user's network, its builder's file under ``code/``.
``model/`` is exactly what gets uploaded to MLflow as the trial's model. Everything is loaded with
``torch.load(..., weights_only=True)``, which refuses to execute code from the file.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import torch
from torch import nn

from trainables.checkpoint_files import DESCRIPTION_FILE, MODEL_DIR, STATE_FILE, WEIGHTS_FILE
from trainables.model import Ensemble, architecture_from_dict
from trainables.network import CODE_DIR


def save_checkpoint(directory: str | Path, state: dict, description: dict) -> None:
    """Write a resumable checkpoint: ``state`` (from the training loop) and the best model so far."""
    for name, content in checkpoint_files(state, description).items():
        path = Path(directory) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


def checkpoint_files(state: dict, description: dict) -> dict[str, bytes]:
    """The files :func:`save_checkpoint` writes, by relative path, made in memory (a pack server hands them to its
    trials without touching the disk)."""
    resume_state = {k: v for k, v in state.items() if k != "best_model"}
    model_description = {**description, "epoch": state["best_epoch"]}
    return {STATE_FILE: _torch_bytes(resume_state), f"{MODEL_DIR}/{WEIGHTS_FILE}": _torch_bytes(state["best_model"]),
            f"{MODEL_DIR}/{DESCRIPTION_FILE}": json.dumps(model_description, indent=2).encode(),
            **{f"{MODEL_DIR}/{path}": text for path, text in network_files(description).items()}}


def network_files(description: dict) -> dict[str, bytes]:
    """A user's network file as its model folder shows it (``code/cnn.py``), for people and the MLflow UI to read;
    loading uses the copy inside ``model.json``, so the two never disagree about what runs."""
    network = description.get("architecture", {}).get("network")
    if not network:
        return {}
    return {f"{CODE_DIR}/{Path(network['filename']).name}": network["source"].encode()}


def _torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def load_checkpoint(directory: str | Path) -> dict:
    """Read back what :func:`save_checkpoint` wrote (best weights included), safely."""
    directory = Path(directory)
    state = torch.load(directory / STATE_FILE, weights_only=True, map_location="cpu")
    state["best_model"] = torch.load(directory / MODEL_DIR / WEIGHTS_FILE, weights_only=True, map_location="cpu")
    return state


def save_model(directory: str | Path, weights: dict, description: dict) -> None:
    """Write a model artifact: weights plus a JSON description (architecture, preprocessing, provenance)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(weights, directory / WEIGHTS_FILE)
    (directory / DESCRIPTION_FILE).write_text(json.dumps(description, indent=2))
    for path, text in network_files(description).items():
        (directory / path).parent.mkdir(parents=True, exist_ok=True)
        (directory / path).write_bytes(text)


def save_ensemble(directory: str | Path, member_dirs: list[Path], description: dict) -> None:
    """Write an ensemble model artifact: each member's model folder copied to ``member_<i>/``, and a JSON
    description naming them (plus the shared preprocessing and where each member came from)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    names = []
    for index, member in enumerate(member_dirs):
        name = f"member_{index}"
        shutil.copytree(member, directory / name)
        names.append(name)
    (directory / DESCRIPTION_FILE).write_text(json.dumps({**description, "ensemble": names}, indent=2))


def load_model(directory: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild a model from a model artifact directory; returns the network (eval mode) and its description.

    An ensemble artifact (see :func:`save_ensemble`) comes back as one :class:`~trainables.model.Ensemble`.
    """
    directory = Path(directory)
    description = json.loads((directory / DESCRIPTION_FILE).read_text())
    if "ensemble" in description:
        members = [load_model(directory / _member_name(name))[0] for name in description["ensemble"]]
        return Ensemble(members, description["preprocessor"]["task"]).eval(), description
    model = architecture_from_dict(description["architecture"]).build()
    model.load_state_dict(torch.load(directory / WEIGHTS_FILE, weights_only=True, map_location="cpu"))
    return model.eval(), description


def _member_name(name: str) -> str:
    # The description comes from an artifact store: a member is a plain folder name, never a path out of it.
    if not name or Path(name).name != name or name in (".", ".."):
        raise ValueError(f"invalid ensemble member name {name!r} in {DESCRIPTION_FILE}")
    return name
