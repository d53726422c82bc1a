"""Small shared pieces of every experiment: seeding, JSON that survives a kill, one way to save a figure."""
from __future__ import annotations

import json
import math
import os
import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every CUDA device) from one integer."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def jsonable(obj):
    """Plain JSON types: non-finite floats become None (JSON has no NaN), tensors/arrays become lists."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, torch.Tensor):
        return jsonable(obj.detach().cpu().tolist())
    return obj


def write_json_atomic(path, obj, indent: int | None = 1) -> str:
    """Write ``jsonable(obj)`` to ``path`` through a temporary file + fsync + rename: a reader (or a resumed
    run after kill -9) sees the old file or the new one, never half of one."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(jsonable(obj), f, indent=indent)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def save_figure(fig, path, dpi: int = 110, tight: bool = True) -> str:
    """Lay out (``tight``: tight_layout; off for figures placed by hand), write (creating the folder) and close
    a matplotlib figure; returns the path."""
    import matplotlib.pyplot as plt

    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
