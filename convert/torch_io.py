"""Read PyTorch checkpoints safely: weights_only, on the CPU, every failure a clear message.

A checkpoint is untrusted input: ``torch.load(weights_only=True)`` refuses any
pickle that would build objects other than tensors and plain containers, so
code carried in a file never runs.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from convert import torch_scan
from pulse_jax.errors import CheckpointError


def load_state_dict(path: str | Path, what: str) -> dict[str, np.ndarray]:
    """A ``{name: tensor}`` file (zip or legacy format, any device tag) -> ``{name: float32 array}``."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path}: no such file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{what} {path}: the file is empty")
    torch_scan.scan(path, f"{what} {path}")  # what it declares, checked before torch allocates it
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{what} {path} was refused: it is not a plain tensor checkpoint and may carry code, so it "
            f"was not loaded (torch said: {first[:300]}). Use the original PULSE file."
        ) from None
    except Exception as e:  # noqa: BLE001 - corrupt files raise anything from struct.error to SystemError
        # weights_only unpickling never runs code from the file, so whatever it raised is only a
        # symptom of damage: report it as such (the fuzz test in tests/convert_test.py feeds it noise).
        raise CheckpointError(
            f"{what} {path} is not a readable PyTorch checkpoint ({type(e).__name__}: "
            f"{str(e).strip()[:200]}); the file may be truncated or of another kind"
        ) from None
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(
            f"{what} {path} holds a {type(obj).__name__}, not a state dict of tensors "
            "({name: tensor}, as PULSE's synthesis.pt and mapping.pt are)"
        )
    out = {}
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"{what} {path}: entry {key!r} is a {type(value).__name__}; a state dict maps names to tensors"
            )
        if not value.is_floating_point():
            raise CheckpointError(f"{what} {path}: tensor {key} has dtype {value.dtype}, expected floating point")
        out[key] = value.detach().to(torch.float32).numpy()
    return out
