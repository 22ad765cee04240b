"""Training checkpoints without pickle: tensors in safetensors, everything else in JSON.

``<run>/checkpoints/last.safetensors`` holds the model (``model.*``), the optimizer state (``opt.<id>.<key>``) and
any further modules of the run (``<name>.*``: ``ema.*``, the moving average of the weights);
``last.json`` holds the epoch, the history, the best score so far and the run's config. Both files are
replaced atomically, JSON last, so a run killed at any moment resumes from the last complete epoch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..fileio import atomic_path, write_json

LAST = "last"
BEST = "best"


def save(folder: Path, name: str, model, optimizer=None, state: dict[str, Any] | None = None,
         modules: dict[str, Any] | None = None) -> None:
    """Write a checkpoint: ``model`` (and ``optimizer``, ``modules`` by name) in safetensors, ``state`` in JSON."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"{prefix}.{k}": v.detach().cpu().contiguous()
               for prefix, module in {**(modules or {}), "model": model}.items()
               for k, v in module.state_dict().items()}
    opt_meta: dict[str, Any] = {}
    if optimizer is not None:
        sd = optimizer.state_dict()
        for pid, pstate in sd["state"].items():
            for key, value in pstate.items():
                tensors[f"opt.{pid}.{key}"] = value.detach().cpu().contiguous().reshape(value.shape)
        opt_meta = {"param_groups": [{k: v for k, v in g.items() if k != "params"} for g in sd["param_groups"]]}
    with atomic_path(folder / f"{name}.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    write_json(folder / f"{name}.json", {**(state or {}), "optimizer": opt_meta})


def load_state(folder: Path, name: str = LAST) -> dict[str, Any] | None:
    """The JSON half of a checkpoint, or None when there is none (or it is incomplete)."""
    meta, weights = folder / f"{name}.json", folder / f"{name}.safetensors"
    if not (meta.is_file() and weights.is_file()):
        return None
    try:
        return json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def restore(folder: Path, name: str, model, optimizer=None, modules: dict[str, Any] | None = None) -> None:
    """Load the model (and optimizer, ``modules`` by name) tensors of a checkpoint in place."""
    import torch
    from safetensors.torch import load_file

    tensors = load_file(str(folder / f"{name}.safetensors"))
    for prefix, module in {"model": model, **(modules or {})}.items():
        module.load_state_dict({k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(f"{prefix}.")},
                               strict=True)
    if optimizer is None:
        return
    sd = optimizer.state_dict()
    state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, pid, key = k.split(".", 2)
            state.setdefault(int(pid), {})[key] = v
    sd["state"] = state
    optimizer.load_state_dict(sd)
    for group in optimizer.param_groups:  # keep the restored tensors on the parameters' device
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                if torch.is_tensor(value) and key != "step":
                    optimizer.state[p][key] = value.to(p.device)
