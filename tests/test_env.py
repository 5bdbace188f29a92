"""ml.env: scales, pick, seeds, banner; ml.show and ml.glue."""

from __future__ import annotations

import pytest
import torch

import minilib as ml


@pytest.mark.parametrize("value", ["smoke", "cpu", "gpu", " CPU "])
def test_scale_reads_book_scale(monkeypatch, value):
    monkeypatch.setenv("BOOK_SCALE", value)
    assert ml.scale() == value.strip().lower()


def test_scale_default_follows_cuda(monkeypatch):
    monkeypatch.delenv("BOOK_SCALE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert ml.scale() == "gpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert ml.scale() == "cpu"


def test_unknown_scale_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("BOOK_SCALE", "huge")
    with pytest.raises(ValueError) as err:
        ml.scale()
    msg = str(err.value)
    assert "huge" in msg and "smoke" in msg and "cpu" in msg and "gpu" in msg


def test_pick_follows_scale(monkeypatch):
    for s, expected in [("smoke", 1), ("cpu", 2), ("gpu", 3)]:
        monkeypatch.setenv("BOOK_SCALE", s)
        assert ml.pick(smoke=1, cpu=2, gpu=3) == expected


def test_pick_needs_every_scale(monkeypatch):
    monkeypatch.setenv("BOOK_SCALE", "cpu")
    with pytest.raises(TypeError):
        ml.pick(smoke=1, cpu=2)  # gpu missing: a notebook must state all three budgets
    monkeypatch.setenv("BOOK_SCALE", "nope")
    with pytest.raises(ValueError):
        ml.pick(smoke=1, cpu=2, gpu=3)


def test_seed_all_makes_runs_repeatable():
    ml.seed_all(123)
    a = torch.randn(5)
    ml.seed_all(123)
    b = torch.randn(5)
    assert torch.equal(a, b)


def test_describe_prints_the_banner_and_returns_none(monkeypatch, capsys):
    monkeypatch.setenv("BOOK_SCALE", "smoke")
    monkeypatch.delenv("BOOK_DRYRUN", raising=False)
    assert ml.describe() is None  # a notebook cell ending with ml.describe() echoes nothing
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert 1 <= len(lines) <= 2
    for key in ("scale: smoke", "device:", "cpu model:", "cores:", "torch threads:", "python:",
                "torch:", "precision: fp32: IEEE", "load:"):
        assert key in out, key
    assert ml.env.cpu_model() in out and "DRY RUN" not in out
    monkeypatch.setenv("BOOK_DRYRUN", "1")
    ml.describe()
    assert capsys.readouterr().out.startswith("DRY RUN")


def test_hardware_keeps_its_keys_and_adds_cpu_model_and_load(monkeypatch):
    monkeypatch.setenv("BOOK_SCALE", "smoke")
    info = ml.env.hardware()
    # the keys cached training records already store
    assert {"scale", "device", "accelerator", "cpu", "cores", "torch threads", "python",
            "torch"} <= set(info)
    assert {"cpu model", "load", "precision", "dry run"} <= set(info)
    assert all(isinstance(v, str) for v in info.values())
    assert info["scale"] == "smoke" and info["device"] in {"cpu", "cuda", "mps"}
    assert info["cpu model"] == ml.env.cpu_model() and info["cpu model"]


def test_hardware_reports_the_machine_load(monkeypatch):
    class Load:
        def __str__(self):
            return "idle (load 0.1 on 2 cores)"

    monkeypatch.setattr(ml.bench, "machine_load", lambda *a, **k: Load(), raising=False)
    assert ml.env.hardware()["load"] == "idle (load 0.1 on 2 cores)"

    def broken(*a, **k):
        raise OSError("no /proc")

    monkeypatch.setattr(ml.bench, "machine_load", broken, raising=False)
    assert ml.env.hardware()["load"].startswith("not measured")  # the banner never fails


def test_cpu_model_reads_proc_cpuinfo(monkeypatch, tmp_path):
    import builtins
    import platform

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\n"
                       "model name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\n\nprocessor\t: 1\n")
    real_open = builtins.open
    monkeypatch.setattr(platform, "system", lambda: "Linux")
    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: real_open(
        cpuinfo if f == "/proc/cpuinfo" else f, *a, **k))
    ml.env.cpu_model.cache_clear()
    try:
        assert ml.env.cpu_model() == "Intel(R) Xeon(R) CPU @ 2.20GHz"
    finally:
        ml.env.cpu_model.cache_clear()


def test_precision_policy_tf32_off_on_import_and_opt_in():
    assert torch.backends.cuda.matmul.allow_tf32 is False
    assert torch.backends.cudnn.allow_tf32 is False
    assert ml.env.precision().startswith("fp32: IEEE (TF32 off for matmul and cuDNN conv)")
    try:
        ml.env.set_precision(tf32=True)
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert "TF32 allowed" in ml.env.precision()
    finally:
        ml.env.set_precision(False)
    assert "IEEE" in ml.env.precision() and "training:" in ml.env.precision()


def test_amp_dtype_picks_bf16_or_fp16(monkeypatch):
    assert ml.env.amp_dtype("cpu") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: not including_emulation and False)
    assert ml.env.amp_dtype("cuda") == torch.float16          # a T4: fp16 (with a scaler)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert ml.env.amp_dtype("cuda") == torch.bfloat16         # A100, H100: bf16

    def old_torch():  # no including_emulation argument: fall back to the capability
        return True

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", old_torch)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda dev=None: (7, 5))
    assert ml.env.amp_dtype("cuda") == torch.float16


@pytest.mark.parametrize("value, expected", [("1", True), ("true", True), ("yes", True),
                                             ("0", False), ("", False)])
def test_dry_run_reads_book_dryrun(monkeypatch, value, expected):
    monkeypatch.setenv("BOOK_DRYRUN", value)
    assert ml.env.dry_run() is expected


def test_trim_cuts_loops_in_a_dry_run_only(monkeypatch):
    monkeypatch.delenv("BOOK_DRYRUN", raising=False)
    assert ml.trim(100) == 100 and ml.trim([1, 2, 3]) == [1, 2, 3]
    monkeypatch.setenv("BOOK_DRYRUN", "1")
    assert ml.trim is ml.env.trim
    assert ml.trim(100) == 2 and ml.trim(1) == 1 and ml.trim(100, keep=5) == 5
    assert ml.trim([64, 128, 256]) == [64, 128] and ml.trim((1, 2, 3)) == (1, 2)
    assert list(ml.trim(range(10))) == [0, 1] and isinstance(ml.trim(range(10)), range)
    assert ml.trim(True) is True and ml.trim(0.5) == 0.5 and ml.trim("abc") == "abc"
    assert ml.trim({"a": 1, "b": 2, "c": 3}) == {"a": 1, "b": 2, "c": 3}  # unchanged


def test_device_is_a_torch_device():
    assert isinstance(ml.device(), torch.device)


def test_show_prints_source_outside_notebooks(capsys):
    ml.show(ml.env.pick)
    assert "def pick" in capsys.readouterr().out


def test_show_rejects_objects_without_source():
    with pytest.raises(TypeError, match="ml.show"):
        ml.show(3)


def test_glue_returns_none_outside_notebooks():
    assert ml.glue("x", 1.5, ".2f") is None  # a cell ending with ml.glue(...) echoes nothing


def test_cpu_features_lists_only_known_vector_extensions():
    feats = ml.env.cpu_features()
    assert isinstance(feats, str) and feats
    assert ml.env.hardware()["cpu features"] == feats
