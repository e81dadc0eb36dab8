"""Atomic, resumable training checkpoints in safetensors (never pickle).

Layout of ``output_dir``::

    latest                    the name of the newest complete checkpoint, e.g. "checkpoint-00000300"
    checkpoint-00000300/
        model.safetensors     model.state_dict(), tied weights stored once (safetensors.torch.save_model)
        optimizer.safetensors the optimizer's tensors: "state.{param_index}.{name}" (and "param_groups.{g}.{key}"
                              for tensor hyperparameters); tensors found in the scheduler state or `extra` go here
                              too, as "scheduler.*" and "extra.*"
        rng.safetensors       the torch CPU generator "torch" and one state per CUDA device "cuda.{i}"
        trainer_state.json    step, the optimizer's param_groups and non-tensor state, scheduler.state_dict(),
                              the python and numpy RNG states and `extra`; a tensor appears as {"__tensor__": key}
    .tmp-*                    a save in progress, or one killed mid-way: ignored, and removed by the next save

A save writes everything into a ``.tmp-`` directory (`spct._atomic.atomic_dir`: each file fsynced, the directory
renamed into place) and only then replaces ``latest``: a run killed at any moment leaves the previous checkpoint
intact and findable. One process writes to an output_dir at a time.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from spct._atomic import TMP_PREFIX, atomic_dir, remove_tree, write_text

__all__ = ["NonFiniteLossError", "check_finite", "latest_checkpoint", "load_checkpoint", "save_checkpoint"]

_NAME = re.compile(r"checkpoint-(\d+)")
_FILES = ("model.safetensors", "optimizer.safetensors", "rng.safetensors", "trainer_state.json")
# Markers in trainer_state.json for what JSON lacks: tensors, tuples, dicts with non-string keys.
_TENSOR, _TUPLE, _ITEMS = "__tensor__", "__tuple__", "__items__"


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stops without saving, so the last good checkpoint is kept."""


def check_finite(loss, step: int) -> float:
    """The loss as a float; NonFiniteLossError when it is NaN or infinite. loss: a number or a 1-element tensor."""
    value = float(loss)
    if not math.isfinite(value):
        raise NonFiniteLossError(f"loss at step {step} is {value}: stopping without saving, so the last good "
                                 "checkpoint is kept; resume from it with a lower learning_rate or grad_clip")
    return value


def _encode(obj, key: str, tensors: dict[str, torch.Tensor]):
    """A JSON-ready copy of `obj`; each tensor moves into `tensors` under its dotted path (`key` for `obj`)."""
    def child(k) -> str:
        return f"{key}.{k}" if key else str(k)
    if isinstance(obj, torch.Tensor):
        tensors[key] = obj.detach().cpu().contiguous()
        return {_TENSOR: key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: _encode(v, child(k), tensors) for k, v in obj.items()}
        return {_ITEMS: [[_encode(k, child(k), tensors), _encode(v, child(k), tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        items = [_encode(v, child(i), tensors) for i, v in enumerate(obj)]
        return {_TUPLE: items} if isinstance(obj, tuple) else items
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {key or 'the value'} of type {type(obj).__name__} in a checkpoint; allowed: "
                    "tensors, dicts, lists, tuples, str, int, float, bool and None")


def _decode(obj, tensors: dict[str, torch.Tensor]):
    """The inverse of _encode."""
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if obj.keys() == {_TENSOR}:
        return tensors[obj[_TENSOR]]
    if obj.keys() == {_TUPLE}:
        return tuple(_decode(v, tensors) for v in obj[_TUPLE])
    if obj.keys() == {_ITEMS}:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in obj[_ITEMS]}
    return {k: _decode(v, tensors) for k, v in obj.items()}


def _rng_state() -> dict:
    numpy_state = np.random.get_state(legacy=False)
    numpy_state["state"]["key"] = numpy_state["state"]["key"].tolist()  # 624 uint32 words
    return {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    numpy_state["state"]["key"] = np.asarray(numpy_state["state"]["key"], dtype=np.uint32)
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available():
        for device, cuda_state in enumerate(state["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, device)


def _write_files(tmp: Path, step: int, model, optimizer, scheduler, extra: dict | None) -> None:
    save_model(model, str(tmp / "model.safetensors"))  # drops the duplicate names of tied tensors
    train_tensors, rng_tensors = {}, {}
    state = {"step": step,
             "optimizer": _encode(optimizer.state_dict(), "", train_tensors),
             "scheduler": None if scheduler is None else _encode(scheduler.state_dict(), "scheduler", train_tensors),
             "extra": _encode({} if extra is None else extra, "extra", train_tensors),
             "rng": _encode(_rng_state(), "", rng_tensors)}
    save_file(train_tensors, str(tmp / "optimizer.safetensors"))
    save_file(rng_tensors, str(tmp / "rng.safetensors"))
    (tmp / "trainer_state.json").write_text(json.dumps(state), encoding="utf-8")  # in the temporary directory


def _remove_leftovers(output_dir: Path) -> None:
    for path in output_dir.glob(f"{TMP_PREFIX}*"):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def _step(path: Path) -> int:
    return int(_NAME.fullmatch(path.name).group(1))


def _checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoint directories in output_dir, oldest step first."""
    found = [p for p in output_dir.iterdir()
             if _NAME.fullmatch(p.name) and p.is_dir() and all((p / f).is_file() for f in _FILES)]
    return sorted(found, key=_step)


def save_checkpoint(output_dir: str | os.PathLike, step: int, model: torch.nn.Module, optimizer, *, scheduler=None,
                    extra: dict | None = None, keep: int = 2) -> Path:
    """Save model, optimizer, scheduler, RNG states, step and `extra` (JSON-like values and tensors) as
    output_dir/checkpoint-{step:08d}, atomically; then point `latest` at it and remove all but the newest `keep`
    checkpoints (the new one always stays). Returns the checkpoint directory."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step = {step!r} is not allowed; expected an integer >= 0")
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"keep = {keep!r} is not allowed; expected an integer >= 1")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(output_dir)
    final = output_dir / f"checkpoint-{step:08d}"
    with atomic_dir(final) as tmp:  # replaces the same step saved before, e.g. by a resumed run
        _write_files(tmp, step, model, optimizer, scheduler, extra)
    write_text(output_dir / "latest", final.name + "\n")
    others = [p for p in _checkpoints(output_dir) if p != final]  # oldest first
    for old in others[:max(len(others) - (keep - 1), 0)]:
        remove_tree(old)
    return final


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The checkpoint `latest` names or, when that is missing or not a complete checkpoint, the complete one with
    the highest step; None when there is none. `.tmp-` directories are never returned."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    complete = _checkpoints(output_dir)
    marker = output_dir / "latest"
    if marker.is_file():
        named = output_dir / marker.read_text(encoding="utf-8").strip()
        if named in complete:
            return named
    return complete[-1] if complete else None


def load_checkpoint(path: str | os.PathLike, model: torch.nn.Module, optimizer, *, scheduler=None) -> dict:
    """Restore the model weights, the optimizer state, the scheduler (when given) and the RNG states from a
    checkpoint directory. Returns {"step": int, "extra": dict}."""
    path = Path(path)
    missing = [f for f in _FILES if not (path / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{path} is not a complete checkpoint: {', '.join(missing)} missing")
    load_model(model, str(path / "model.safetensors"))
    state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    train_tensors = load_file(str(path / "optimizer.safetensors"))
    optimizer.load_state_dict(_decode(state["optimizer"], train_tensors))
    if scheduler is not None:
        if state["scheduler"] is None:
            raise ValueError(f"{path} holds no scheduler state, but a scheduler was given to restore")
        scheduler.load_state_dict(_decode(state["scheduler"], train_tensors))
    _set_rng_state(_decode(state["rng"], load_file(str(path / "rng.safetensors"))))
    return {"step": state["step"], "extra": _decode(state["extra"], train_tensors)}
