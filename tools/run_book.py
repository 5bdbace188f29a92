#!/usr/bin/env python3
"""Execute the book's notebooks, one at a time, and store their outputs.

    python tools/run_book.py notebooks/01_measuring/01_1_timing.py   # one notebook
    python tools/run_book.py --all                                    # every notebook in _toc.yml order
    BOOK_SCALE=gpu python tools/run_book.py --all                     # the gpu-scale refresh
    BOOK_DRYRUN=1 BOOK_SCALE=gpu python tools/run_book.py --all --no-store   # the dry run

Each notebook's jupytext source (``.py``) is executed top to bottom on a fresh kernel with
nbclient, in its own folder, and written to its paired ``.ipynb`` (unless ``--no-store``).
A notebook that fails is not stored (its stored outputs stay as they were); the run goes on
and the exit status says it failed. Every run appends one row per notebook to the runtime
table (``notebooks/RUNTIMES.md`` by default): wall time, scale, device, machine load.

Notebooks run serially on purpose: the book's timings are only right on a quiet machine.
The script prints the machine's load before each notebook and warns when it is busy.

Needs: jupytext, nbclient, ipykernel (and minilib importable: the repository root is put on
the kernel's ``PYTHONPATH``). It does not need the jupytext or jupyter command-line tools,
so it runs on a GPU box with a preinstalled torch and no network (see book/how_to_run.md).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def toc_notebooks() -> list[Path]:
    """The notebooks listed in ``_toc.yml``, in book order (as jupytext ``.py`` sources)."""
    toc = (ROOT / "_toc.yml").read_text()
    out = []
    for entry in re.findall(r"file:\s*(notebooks/\S+)", toc):
        py = ROOT / f"{entry}.py"
        if py.exists():
            out.append(py)
    return out


def machine_load() -> tuple[float, int]:
    """(cores' worth of CPU used by other processes over one second, cores).

    Sampled from ``/proc/stat`` with ``minilib.bench.machine_load`` where it can be (the
    1-minute load average lags: right after a notebook it still counts that notebook);
    else the load average, or -1 where the OS reports neither.
    """
    try:
        sys.path.insert(0, str(ROOT))
        from minilib.bench import machine_load as sample
        load = sample(1.0)
        if load.other_cores is not None:
            return max(0.0, load.other_cores), load.cores
    except Exception:  # no torch here, or no /proc/stat: fall back to the load average
        pass
    try:
        return os.getloadavg()[0], os.cpu_count() or 1
    except (OSError, AttributeError):
        return -1.0, os.cpu_count() or 1


def _device() -> str:
    try:
        import torch
        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except Exception:  # torch missing or broken: the notebook will say so itself
        pass
    return "cpu"


def _strip_widgets(nb) -> None:
    """Drop widget state (tqdm.auto, ipywidgets): it would bloat the stored notebook."""
    nb.metadata.pop("widgets", None)


def execute(py: Path, timeout: int, store: bool) -> tuple[bool, float, str]:
    """Run one notebook; return (ok, wall seconds, error summary)."""
    import jupytext
    import nbclient

    nb = jupytext.read(py)
    env_path = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = str(ROOT) + (os.pathsep + env_path if env_path else "")
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=timeout, record_timing=False,
        resources={"metadata": {"path": str(py.parent)}},
    )
    start = time.perf_counter()
    try:
        client.execute()
    except Exception as err:  # CellExecutionError, timeout, dead kernel
        wall = time.perf_counter() - start
        text = str(err).strip().splitlines()
        return False, wall, (text[-1] if text else type(err).__name__)[:300]
    wall = time.perf_counter() - start
    if store:
        _strip_widgets(nb)
        jupytext.write(nb, py.with_suffix(".ipynb"))
    return True, wall, ""


def append_runtimes(table: Path, rows: list[dict]) -> None:
    """Append this run's rows to the markdown runtime table (created with a header)."""
    header = ("# Notebook run times\n\n"
              "Written by `tools/run_book.py`: one row per notebook per run, newest last. "
              "Wall time of the whole notebook on a fresh kernel (data loading, training of "
              "models not yet cached, every measurement).\n\n"
              "| date (UTC) | notebook | scale | dry run | device | wall (s) | CPU used by others just before (cores) | stored | result |\n"
              "|---|---|---|---|---|---:|---:|---|---|\n")
    if not table.exists():
        table.write_text(header)
    with table.open("a") as f:
        for r in rows:
            f.write(f"| {r['date']} | {r['notebook']} | {r['scale']} | {r['dry']} | {r['device']} "
                    f"| {r['wall']:.0f} | {r['load']} | {r['stored']} | {r['result']} |\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("notebooks", nargs="*", help="jupytext .py sources (or .ipynb) to run")
    ap.add_argument("--all", action="store_true", help="every notebook in _toc.yml, in order")
    ap.add_argument("--no-store", action="store_true", help="execute only; keep stored outputs")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per cell (default 3600)")
    ap.add_argument("--table", default=str(ROOT / "notebooks" / "RUNTIMES.md"),
                    help="runtime table to append to ('' for none)")
    ap.add_argument("--from", dest="start", default=None,
                    help="with --all: start at the notebook whose name contains this")
    args = ap.parse_args(argv)

    paths = toc_notebooks() if args.all else [Path(p).resolve().with_suffix(".py") for p in args.notebooks]
    if args.all and args.start:
        names = [p.name for p in paths]
        first = next((i for i, n in enumerate(names) if args.start in n), None)
        if first is None:
            ap.error(f"--from {args.start!r} matches no notebook; they are {names}")
        paths = paths[first:]
    if not paths:
        ap.error("name notebooks to run, or --all")
    for p in paths:
        if not p.exists():
            ap.error(f"{p} does not exist (give the notebook's .py jupytext source)")

    os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars in stored outputs
    # torch.compile's default pool of compile-worker processes keeps other processes busy
    # while the next cells time things (measured: 0.38 of 2 cores, flagged as a busy
    # machine in 2.1); compile in the kernel's own process instead.
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"  # inline figures
    scale = os.environ.get("BOOK_SCALE", "") or "default"
    dry = os.environ.get("BOOK_DRYRUN", "").lower() in ("1", "true", "yes")
    store = not args.no_store
    device = _device()
    rows, failed = [], []
    total_start = time.perf_counter()
    print(f"run_book: {len(paths)} notebook(s), scale={scale}, dry_run={dry}, device={device}, "
          f"store={store}", flush=True)
    for py in paths:
        load, cores = machine_load()
        busy = load > 0.25  # a quarter of a core used by others: ml.bench's threshold
        rel = py.relative_to(ROOT).as_posix() if py.is_relative_to(ROOT) else str(py)
        print(f"-> {rel}  (other processes use {load:.2f} of {cores} cores{'; BUSY: timings will be wrong' if busy else ''})",
              flush=True)
        ok, wall, err = execute(py, args.timeout, store)
        print(f"   {'ok' if ok else 'FAILED'} in {wall:.0f} s" + (f": {err}" if err else ""), flush=True)
        if not ok:
            failed.append(rel)
        rows.append(dict(date=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
                         notebook=py.stem, scale=scale, dry="yes" if dry else "no", device=device,
                         wall=wall, load=f"{load:.2f}/{cores}", stored="yes" if ok and store else "no",
                         result="ok" if ok else f"failed: {err[:80].replace('|', '/')}"))
    total = time.perf_counter() - total_start
    if args.table:
        append_runtimes(Path(args.table), rows)
    print(f"run_book: {len(paths) - len(failed)}/{len(paths)} ok, {total:.0f} s in all")
    print(json.dumps({r["notebook"]: round(r["wall"], 1) for r in rows}))
    if failed:
        print("failed: " + ", ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
