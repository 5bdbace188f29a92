"""The Colab-style install: `pip install` of the repository into a clean virtualenv.

Colab has torch preinstalled; minilib asks only for `torch>=2.5` so pip must keep it.
This test simulates that: a fresh venv gets torch first, then the repository, and we
check torch was not replaced and minilib works from outside the checkout. It downloads
nothing on the CI machine (torch comes from the local wheel there); elsewhere it runs only
when asked (BOOK_INSTALL_TEST=1), since a fresh torch is a large download.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    not (os.environ.get("CI") or os.environ.get("BOOK_INSTALL_TEST")),
    reason="set BOOK_INSTALL_TEST=1 to test a clean-venv install (CI always does)",
)


def run(*cmd, cwd=None, env=None):
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=900)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_pip_install_into_clean_venv_keeps_preinstalled_torch(tmp_path):
    import torch

    # A copy of what the repository ships as a package (what `pip install git+URL` builds).
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "minilib", src / "minilib", ignore=shutil.ignore_patterns("__pycache__"))

    venv = tmp_path / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    run(base, "-m", "venv", venv)
    py = venv / "bin" / "python"
    torch_version = torch.__version__.split("+")[0]
    run(py, "-m", "pip", "install", "-q", f"torch=={torch_version}")  # "preinstalled", as on Colab
    before = run(py, "-c", "import torch; print(torch.__version__)").strip()
    run(py, "-m", "pip", "install", "-q", str(src))
    after = run(py, "-c", "import torch; print(torch.__version__)").strip()
    assert before == after, f"installing minilib replaced torch {before} with {after}"

    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in {"BOOK_DATA", "BOOK_CACHE", "PYTHONPATH"}}
    env["HOME"] = str(home)
    out = run(
        py, "-c",
        "import minilib as ml, pathlib; ml.describe(); "
        "print(pathlib.Path(ml.__file__).parent); print(ml.data.data_root())",
        cwd=tmp_path, env=env,
    )
    lines = out.strip().splitlines()
    assert "site-packages" in lines[-2], f"minilib imported from {lines[-2]}, not the venv"
    assert lines[-1].startswith(str(home)), f"outside a checkout, data goes to ~/.cache, got {lines[-1]}"
