"""The machine a notebook runs on: device, seeds, and the three scales.

Every notebook runs at one of three budgets, chosen by the environment variable
``BOOK_SCALE``:

* ``smoke``: CI on 2 CPU cores, under a minute per notebook, tiny subsets;
* ``cpu``: a laptop, minutes;
* ``gpu``: the full benchmark on one GPU.

Notebooks choose sizes with :func:`pick`, never with ``if`` ladders, so one cell
reads the same at every scale::

    epochs = ml.pick(smoke=1, cpu=4, gpu=24)

**Dry run** (``BOOK_DRYRUN=1``, :func:`dry_run`): the sizes of the scale stay (typically
``BOOK_SCALE=gpu`` on a CPU machine), but ``ml.train.fit`` stops after 2 optimizer steps
and notebooks cut their own loops and sweeps with :func:`trim`, so shape, memory-layout
and device errors at gpu sizes show up in minutes, before a GPU is rented.

**Precision** (:func:`set_precision`, :func:`precision`): importing minilib turns TF32 off
for CUDA matmuls and cuDNN convolutions, so "fp32" means IEEE fp32 on every device.
Reduced precision is always explicit: ``ml.train.fit`` trains under autocast on CUDA
(:func:`amp_dtype`: bf16, or fp16 with a gradient scaler where bf16 is not supported)
and ``ml.train.evaluate`` runs in fp32 unless given ``amp=``.
"""

from __future__ import annotations

import functools
import os
import platform
import random
import subprocess
from typing import TypeVar

import numpy as np
import torch

__all__ = ["cpu_features", "SCALES", "device", "seed_all", "scale", "pick", "describe", "hardware",
           "cpu_model", "dry_run", "trim", "set_precision", "precision", "amp_dtype"]

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


# ---------------------------------------------------------------------------------------
# Dry run: gpu-scale sizes, a step or two of every loop
# ---------------------------------------------------------------------------------------

def dry_run() -> bool:
    """``True`` when ``BOOK_DRYRUN`` is set to 1 (or true, yes, on): a dry run.

    The sizes of the scale stay; ``ml.train.fit`` stops after 2 optimizer steps and
    evaluates at most 2 batches, ``ml.train.train_or_load`` trains a throwaway model
    (the real cache is neither read nor written), and notebooks cut their own loops with
    :func:`trim`. Numbers printed in a dry run mean nothing; the run checks that
    everything fits and runs.
    """
    return os.environ.get("BOOK_DRYRUN", "").strip().lower() in ("1", "true", "yes", "on")


def trim(x: T, keep: int = 2) -> T:
    """``x`` cut to ``keep`` in a dry run (:func:`dry_run`); ``x`` itself otherwise.

    An int becomes ``min(x, keep)`` (a step count), a list, tuple or range its first
    ``keep`` items (a sweep); anything else is returned unchanged. Notebooks wrap their
    own loops with it::

        for width in ml.trim([64, 128, 256, 512]): ...
        for step in range(ml.trim(n_steps)): ...
    """
    if not dry_run() or isinstance(x, bool):
        return x
    if isinstance(x, int):
        return min(x, keep)  # type: ignore[return-value]
    if isinstance(x, (list, tuple, range)):
        return x[:keep]  # type: ignore[return-value]
    return x


# ---------------------------------------------------------------------------------------
# Precision: fp32 means IEEE fp32; reduced precision is always explicit
# ---------------------------------------------------------------------------------------

def set_precision(tf32: bool = False) -> None:
    """Allow (``tf32=True``) or forbid (default) TF32 in CUDA fp32 matmuls and cuDNN convs.

    PyTorch's defaults differ: TF32 off for matmuls but *on* for cuDNN convolutions, so on
    an Ampere or Hopper GPU an "fp32" convolution rounds its inputs to 10 mantissa bits
    (errors around 1e-3), which breaks fp32 checks and puts an MFU computed against an
    fp32 peak above 100%. minilib calls ``set_precision(False)`` on import, so fp32 is IEEE
    fp32 on every device; a notebook that measures TF32 opts in with
    ``ml.env.set_precision(tf32=True)`` (the banner says so). No effect on the CPU.
    """
    torch.backends.cuda.matmul.allow_tf32 = bool(tf32)
    torch.backends.cudnn.allow_tf32 = bool(tf32)


def amp_dtype(dev: torch.device | str | None = None) -> torch.dtype:
    """The autocast dtype for training on ``dev`` (default :func:`device`).

    CUDA: bfloat16 where the GPU has bf16 tensor cores (compute capability 8.0+: A100,
    H100, RTX 30xx and later), else float16, which needs a gradient scaler (a Colab T4;
    ``ml.train.fit`` adds one). Other devices: bfloat16.
    """
    dev = torch.device(dev) if dev is not None else device()
    if dev.type != "cuda":
        return torch.bfloat16
    try:  # without emulation: a T4 "supports" bf16 only by emulating it, slowly
        native = torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch < 2.4 has no such argument
        native = torch.cuda.get_device_capability(dev) >= (8, 0)
    return torch.bfloat16 if native else torch.float16


def precision() -> str:
    """One line that states the precision of this run's measurements, e.g.

    ``fp32: IEEE (TF32 off for matmul and cuDNN conv); training: bf16 autocast on CUDA``.
    It reads the current flags, so a notebook that called ``set_precision(tf32=True)``
    (or changed the torch flags itself) is described as it is.
    """
    mm = torch.backends.cuda.matmul.allow_tf32
    conv = torch.backends.cudnn.allow_tf32
    if not mm and not conv:
        fp32 = "fp32: IEEE (TF32 off for matmul and cuDNN conv)"
    elif mm and conv:
        fp32 = "fp32: TF32 allowed for matmul and cuDNN conv (10-bit mantissa inputs)"
    else:
        fp32 = f"fp32: TF32 allowed for {'matmul' if mm else 'cuDNN conv'} only"
    dev = device()
    if dev.type == "cuda":
        half = amp_dtype(dev)
        train = ("bf16 autocast on CUDA" if half == torch.bfloat16
                 else "fp16 autocast with a gradient scaler on CUDA (no bf16 tensor cores)")
    else:
        train = f"fp32 on {dev.type} (autocast only where asked)"
    return f"{fp32}; training: {train}"


# ---------------------------------------------------------------------------------------
# The machine: hardware, load, the banner
# ---------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name, e.g. ``AMD EPYC 7B13`` or ``Apple M2``.

    Linux: ``model name`` in ``/proc/cpuinfo`` (``platform.processor()`` is empty there;
    arm64 boards may only have ``Hardware`` or a device-tree model); macOS: ``sysctl
    machdep.cpu.brand_string``; elsewhere ``platform.processor()``. Falls back to the
    architecture (``x86_64``, ``arm64``).
    """
    system = platform.system()
    try:
        if system == "Linux":
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                fields = {}
                for line in f:
                    key, sep, value = line.partition(":")
                    if sep and value.strip():
                        fields.setdefault(key.strip().lower(), value.strip())
            for key in ("model name", "hardware", "cpu model", "processor"):
                if key in fields and not fields[key].isdigit():
                    return " ".join(fields[key].split())
            try:
                with open("/proc/device-tree/model", encoding="utf-8", errors="replace") as f:
                    name = f.read().strip("\x00 \n")
                if name:
                    return name
            except OSError:
                pass
        elif system == "Darwin":
            out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"],
                                 capture_output=True, text=True, timeout=5)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


_ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16",
              "amx_int8", "asimd", "asimddp", "bf16", "i8mm", "sve")


@functools.lru_cache(maxsize=1)
def cpu_features() -> str:
    """The vector extensions this CPU reports that decide which fast kernels exist.

    int8 and bf16 matmuls are fast only where the CPU has instructions for them (x86:
    AVX-512 VNNI / BF16, AMX; arm64: dot-product, i8mm, bf16), so results of chapters 1
    and 5 depend on this list: e.g. ``avx2 avx512f avx512_bf16 avx512_vnni``. Linux only
    (the ``flags``/``Features`` line of ``/proc/cpuinfo``); elsewhere ``unknown``.
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip().lower() in ("flags", "features"):
                    have = set(value.split())
                    return " ".join(x for x in _ISA_FLAGS if x in have) or "none of " + "/".join(_ISA_FLAGS[:4])
    except OSError:
        pass
    return "unknown"


def _machine_load() -> str:
    """``str(ml.bench.machine_load())``: a short sample of how busy the machine is."""
    from . import bench  # lazily: bench imports env

    sample = getattr(bench, "machine_load", None)
    if sample is None:
        return "not measured"
    try:
        try:
            load = sample(seconds=0.2)  # short: the banner of every notebook waits for it
        except TypeError:
            load = sample()
        return str(load)
    except Exception as err:  # the banner must never fail because of the load sample
        return f"not measured ({type(err).__name__})"


def hardware() -> dict[str, str]:
    """A small dict describing this machine and run, as strings.

    Keys: ``scale``, ``device``, ``accelerator`` (GPU name and memory, or ``none``),
    ``cpu`` (architecture), ``cpu model`` (:func:`cpu_model`), ``cpu features``
    (:func:`cpu_features`), ``cores``, ``torch
    threads``, ``python``, ``torch``, ``precision`` (:func:`precision`), ``load`` (the
    machine load, ``ml.bench.machine_load()``) and ``dry run`` (``yes``/``no``). Training
    records (``ml.train.train_or_load``) store it, so a cached model says where it was
    trained.
    """
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
        "cpu": platform.machine() or platform.processor(),
        "cpu model": cpu_model(),
        "cpu features": cpu_features(),
        "cores": str(os.cpu_count()),
        "torch threads": str(torch.get_num_threads()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "precision": precision(),
        "load": _machine_load(),
        "dry run": "yes" if dry_run() else "no",
    }


def describe() -> None:
    """Print the banner: scale, device, CPU, versions, precision, machine load (2 lines).

    Every notebook calls this in its setup cell, so stored outputs say where and how
    their numbers came from; a dry run says ``DRY RUN`` first. Returns ``None`` (a
    notebook cell ending with ``ml.describe()`` shows the banner only); the same facts as
    a dict: :func:`hardware`.
    """
    info = hardware()
    first = ["DRY RUN (gpu-scale sizes, 2 steps per loop: the numbers mean nothing)"] \
        if dry_run() else []
    first += [f"{k}: {info[k]}" for k in ("scale", "device", "accelerator", "cpu model",
                                          "cpu features", "cores", "torch threads", "python",
                                          "torch")]
    second = [f"precision: {info['precision']}", f"load: {info['load']}"]
    print(" | ".join(first))
    print(" | ".join(second))


set_precision(False)  # on import: fp32 is IEEE fp32 (see set_precision)
