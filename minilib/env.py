"""The machine a notebook runs on: device, seeds, and the three scales.

Every notebook runs at one of three budgets, chosen by the environment variable
``BOOK_SCALE``:

* ``smoke``: CI on 2 CPU cores, under a minute per notebook, tiny subsets;
* ``cpu``: a laptop, minutes;
* ``gpu``: the full benchmark on one GPU.

Notebooks choose sizes with :func:`pick`, never with ``if`` ladders, so one cell
reads the same at every scale::

    epochs = ml.pick(smoke=1, cpu=4, gpu=24)
"""

from __future__ import annotations

import os
import platform
import random
from typing import TypeVar

import numpy as np
import torch

__all__ = ["SCALES", "device", "seed_all", "scale", "pick", "describe", "hardware"]

SCALES: tuple[str, ...] = ("smoke", "cpu", "gpu")
T = TypeVar("T")


def device() -> torch.device:
    """The fastest device here: ``cuda`` if a GPU is visible, else ``mps``, else ``cpu``."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_all(seed: int = 0) -> None:
    """Seed Python's, NumPy's and torch's generators (all devices) with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def scale() -> str:
    """The scale this run uses: ``BOOK_SCALE`` if set, else ``gpu`` with CUDA, else ``cpu``.

    Raises:
        ValueError: ``BOOK_SCALE`` is set to something other than smoke, cpu or gpu.
    """
    value = os.environ.get("BOOK_SCALE", "").strip().lower()
    if not value:
        return "gpu" if torch.cuda.is_available() else "cpu"
    if value not in SCALES:
        raise ValueError(
            f"BOOK_SCALE={os.environ['BOOK_SCALE']!r} is not a scale; "
            f"use one of {', '.join(SCALES)} (e.g. BOOK_SCALE=smoke), or unset it "
            "to get gpu when CUDA is available and cpu otherwise"
        )
    return value


def pick(*, smoke: T, cpu: T, gpu: T) -> T:
    """Return the value for the current :func:`scale`.

    All three must be given, so a notebook states its budget at every scale::

        n_train = ml.pick(smoke=512, cpu=10_000, gpu=50_000)
    """
    return {"smoke": smoke, "cpu": cpu, "gpu": gpu}[scale()]


def hardware() -> dict[str, str]:
    """A small dict describing this machine: device name, cores, torch version, scale."""
    dev = device()
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        accel = f"{props.name} ({props.total_memory / 2**30:.0f} GiB)"
    elif dev.type == "mps":
        accel = "Apple GPU (mps)"
    else:
        accel = "none"
    return {
        "scale": scale(),
        "device": str(dev),
        "accelerator": accel,
        "cpu": platform.processor() or platform.machine(),
        "cores": str(os.cpu_count()),
        "torch threads": str(torch.get_num_threads()),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def describe() -> dict[str, str]:
    """Print (and return) a one-line banner: scale, device, hardware and versions.

    Every notebook calls this in its setup cell, so stored outputs say where
    their numbers came from.
    """
    info = hardware()
    print(" | ".join(f"{k}: {v}" for k, v in info.items()))
    return info
