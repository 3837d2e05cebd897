"""Seeding and RNG state: the only place that touches the global random generators.

``seed_everything(seed)`` seeds Python, NumPy and torch (CPU and every CUDA device).
``capture_rng_state()`` / ``restore_rng_state(tensors, meta)`` save and restore all of them
for an exact resume: the torch states are tensors (stored in safetensors), the Python and
NumPy states JSON-able lists (stored in the checkpoint's JSON).
"""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)  # also seeds every CUDA device


def capture_rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    """The current state of every global generator: ``(tensors, meta)``.

    ``tensors``: ``"torch"`` (CPU) and ``"cuda<i>"`` per visible device (uint8 tensors);
    ``meta``: ``{"python": [...], "numpy": [...]}`` (JSON-serialisable).
    """
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{i}"] = state
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    meta = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }
    return tensors, meta


def restore_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Inverse of :func:`capture_rng_state` (CUDA states are restored when CUDA is present)."""
    torch.set_rng_state(tensors["torch"])
    cuda = [
        tensors[k] for k in sorted(tensors, key=lambda k: int(k[4:]) if k[4:].isdigit() else -1) if k.startswith("cuda")
    ]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
