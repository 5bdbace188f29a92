"""ml.data: where data is found, download and checksums (against a server on 127.0.0.1,
never the internet), the loaders on the real datasets in BOOK_DATA, and the device-side
batching and augmentation."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import shutil
import socket
import tarfile
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import minilib as ml
from minilib import data
from minilib.data import ChecksumError, DataFile, Dataset, DatasetNotFoundError


# ---------------------------------------------------------------------------------------
# Fixtures: an isolated set of data folders and a local HTTP server
# ---------------------------------------------------------------------------------------

@pytest.fixture
def isolated(monkeypatch, tmp_path) -> SimpleNamespace:
    """BOOK_DATA, BOOK_CACHE and HOME in tmp_path; no repository data/ folder; no proxy."""
    dirs = SimpleNamespace(data=tmp_path / "data", cache=tmp_path / "cache", home=tmp_path / "home")
    dirs.data.mkdir()
    dirs.home.mkdir()
    monkeypatch.setenv("BOOK_DATA", str(dirs.data))
    monkeypatch.setenv("BOOK_CACHE", str(dirs.cache))
    monkeypatch.setenv("HOME", str(dirs.home))
    monkeypatch.setattr(data, "_checkout", lambda: None)
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    return dirs


@pytest.fixture
def server(tmp_path):
    """A static file server on 127.0.0.1 (ephemeral port) serving tmp_path/www."""
    root = tmp_path / "www"
    root.mkdir()
    hits: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self):
            hits.append(self.path)
            super().do_GET()

        def log_message(self, *args):  # keep pytest output clean
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield SimpleNamespace(url=f"http://127.0.0.1:{httpd.server_port}/", root=root, hits=hits)
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (connection refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hello.txt"


GOOD = b"To be, or not to be, that is the question.\n" * 100


def add_tiny_dataset(monkeypatch, url: str, sha256: str = hashlib.sha256(GOOD).hexdigest()):
    """Register a one-file dataset 'tiny' (folder 'tiny') whose file lives at ``url``."""
    ds = Dataset("tiny", "tiny", (DataFile("hello.txt", url=url, sha256=sha256),),
                 "a test dataset", homepage="http://127.0.0.1/", check="sha256")
    monkeypatch.setitem(data.DATASETS, "tiny", ds)
    return ds


# ---------------------------------------------------------------------------------------
# fetch: download, checksums, errors
# ---------------------------------------------------------------------------------------

def test_fetch_downloads_verifies_and_then_finds_it(isolated, server, monkeypatch):
    (server.root / "hello.txt").write_bytes(GOOD)
    add_tiny_dataset(monkeypatch, server.url + "hello.txt")
    folder = data.fetch("tiny", quiet=True)
    assert folder == isolated.data / "tiny"
    assert (folder / "hello.txt").read_bytes() == GOOD
    assert [p.name for p in folder.iterdir()] == ["hello.txt"]  # no temp file left
    assert len(server.hits) == 1
    assert data.fetch("TINY", quiet=True) == folder  # found on disk: no second download
    assert len(server.hits) == 1


def test_fetch_real_registry_entry_from_local_server(book_data, isolated, server, monkeypatch):
    """The Tiny Shakespeare entry, its URL pointed at 127.0.0.1: real sha256, real loader."""
    shutil.copy(book_data / "tinyshakespeare" / "input.txt", server.root / "input.txt")
    ds = data.DATASETS["shakespeare"]
    f = dataclasses.replace(ds.files[0], url=server.url + "input.txt")
    monkeypatch.setitem(data.DATASETS, "shakespeare", dataclasses.replace(ds, files=(f,)))
    corpus = data.shakespeare()
    assert (isolated.data / "tinyshakespeare" / "input.txt").is_file()
    assert corpus.vocab_size == 65 and server.hits == ["/input.txt"]


def test_fetch_corrupt_download_raises_and_deletes(isolated, server, monkeypatch):
    bad = GOOD[:-10] + b"corrupted!"
    (server.root / "hello.txt").write_bytes(bad)
    expected = hashlib.sha256(GOOD).hexdigest()
    add_tiny_dataset(monkeypatch, server.url + "hello.txt", expected)
    with pytest.raises(ChecksumError) as err:
        data.fetch("tiny", quiet=True)
    msg = str(err.value)
    assert "hello.txt" in msg and expected in msg and hashlib.sha256(bad).hexdigest() in msg
    assert "deleted" in msg
    folder = isolated.data / "tiny"
    assert not (folder / "hello.txt").exists()
    assert not any(folder.iterdir())  # the partial download is gone too


def test_fetch_unreachable_names_dataset_places_and_fix(isolated, monkeypatch):
    url = closed_port_url()
    add_tiny_dataset(monkeypatch, url)
    with pytest.raises(DatasetNotFoundError) as err:
        data.fetch("tiny", quiet=True)
    msg = str(err.value)
    assert "'tiny'" in msg and url in msg and "BOOK_DATA=" in msg and "tiny/hello.txt" in msg
    for place in data.search_paths("tiny"):
        assert str(place) in msg
    assert str(isolated.data / "tiny") in msg and str(isolated.home) in msg
    assert isinstance(err.value, FileNotFoundError)
    assert not (isolated.data / "tiny").exists()  # no empty folder left behind


def point_at(monkeypatch, name: str, base_url: str, **changes) -> None:
    """Point every file of registry entry ``name`` at ``base_url`` (+ its file name)."""
    ds = data.DATASETS[name]
    files = tuple(dataclasses.replace(f, url=base_url + Path(f.path).name, **changes)
                  for f in ds.files)
    monkeypatch.setitem(data.DATASETS, name, dataclasses.replace(ds, files=files))


def test_bsd100_download_and_extraction(isolated, server, monkeypatch):
    """BSD100 is download-only: a stand-in BSDS300 archive exercises download, safe
    extraction of images/test/ into the cache, and the 100-image content check."""
    from PIL import Image

    with tarfile.open(server.root / "BSDS300-images.tgz", "w:gz") as tar:
        for split, n in [("test", 100), ("train", 3)]:
            for i in range(n):
                buf = io.BytesIO()
                Image.new("RGB", (6, 4), (i, 0, 0)).save(buf, format="PNG")
                info = tarfile.TarInfo(f"BSDS300/images/{split}/{1000 + i}.png")
                info.size = buf.tell()
                buf.seek(0)
                tar.addfile(info, buf)
    point_at(monkeypatch, "bsd100", server.url)
    images = data.sr_images("BSD100")
    assert len(images) == 100 and images[0].shape == (3, 4, 6) and images[0].dtype == torch.uint8
    assert [int(im[0, 0, 0]) for im in images[:3]] == [0, 1, 2]  # sorted by file name
    assert (isolated.cache / "sr" / "BSD100" / ".complete").is_file()


def test_mnist_loader_reads_idx_files(isolated, server, monkeypatch):
    """MNIST is download-only: stand-in idx files (served locally, no checksum) check
    the idx parsing and the (N, 1, 28, 28) / (N,) layout."""
    import gzip

    rng = np.random.default_rng(0)
    for prefix, n in [("train", 60_000), ("t10k", 10_000)]:
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        header = bytes([0, 0, 8, 3]) + np.array([n, 28, 28], ">u4").tobytes()
        (server.root / f"{prefix}-images-idx3-ubyte.gz").write_bytes(
            gzip.compress(header + images.tobytes(), compresslevel=1))
        header = bytes([0, 0, 8, 1]) + np.array([n], ">u4").tobytes()
        (server.root / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(
            gzip.compress(header + labels.tobytes(), compresslevel=1))
    point_at(monkeypatch, "mnist", server.url, md5=None)
    x, y = data.mnist(train=False)
    assert x.shape == (10_000, 1, 28, 28) and x.dtype == torch.uint8
    assert y.dtype == torch.int64 and torch.equal(y[:12], torch.arange(12) % 10)
    assert torch.equal(x[0, 0], torch.from_numpy(images[0]))
    assert data.mnist(train=True)[0].shape == (60_000, 1, 28, 28)


def test_unknown_dataset_lists_known_names():
    with pytest.raises(ValueError, match="cifar10.*fashion_mnist"):
        data.fetch("imagenet")
    with pytest.raises(ValueError, match="Set5"):
        data.sr_images("Set99")


def test_registry_is_complete():
    assert set(data.DATASETS) == {"cifar10", "fashion_mnist", "mnist", "shakespeare",
                                  "set5", "set14", "t91", "bsd100"}
    for ds in data.DATASETS.values():
        assert ds.files and all(f.url and f.url.startswith("http") for f in ds.files)
    assert [len(data.DATASETS[k].files) for k in ("set5", "set14", "t91")] == [5, 14, 91]
    assert "/usr/share/datasets/fashion-mnist" in [
        str(p) for p in data.search_paths("fashion_mnist")]


# ---------------------------------------------------------------------------------------
# Where data lives
# ---------------------------------------------------------------------------------------

def test_data_root_and_search_paths_order(isolated, monkeypatch, tmp_path):
    assert data.data_root() == isolated.data
    assert data.search_paths()[0] == isolated.data
    monkeypatch.delenv("BOOK_DATA")
    repo = tmp_path / "repo"
    monkeypatch.setattr(data, "_checkout", lambda: repo)
    assert data.data_root() == repo / "data"
    assert data.search_paths() == [repo / "data", data._home_data()]
    monkeypatch.setattr(data, "_checkout", lambda: None)
    assert data.data_root() == isolated.home / ".cache" / "efficient-dl-from-scratch" / "data"


def test_display_path_is_relative_to_the_data_folder(isolated, monkeypatch, tmp_path):
    """Stored outputs never show the machine's absolute paths (issue 11)."""
    cached = data.cache_dir() / "models" / "cifar_cnn-cpu-0123456789ab.pt"
    assert data.display_path(cached) == "models/cifar_cnn-cpu-0123456789ab.pt (in $BOOK_CACHE)"
    monkeypatch.delenv("BOOK_CACHE")
    cached = data.cache_dir() / "models" / "cifar_cnn-cpu-0123456789ab.pt"
    assert cached.parent.parent == isolated.data / "cache"
    assert data.display_path(cached) == "models/cifar_cnn-cpu-0123456789ab.pt (in the data folder)"
    assert data.display_path(isolated.data / "cifar10" / "cifar-10-python.tar.gz") == \
        "cifar10/cifar-10-python.tar.gz (in the data folder)"
    assert data.display_path(isolated.home / "x" / "y.pt") == "~/x/y.pt"
    assert data.display_path(tmp_path / "elsewhere" / "z.pt") == "z.pt"
    for p in (cached, isolated.data / "a", isolated.home / "b", tmp_path / "c"):
        assert str(tmp_path) not in data.display_path(p)


def test_loaders_keep_their_real_sizes_in_a_dry_run(book_data, monkeypatch):
    """A dry run cuts loops, not data: shapes and memory at gpu sizes are what it checks."""
    monkeypatch.setenv("BOOK_DRYRUN", "1")
    x, y = data.fashion_mnist(train=False)
    assert x.shape == (10_000, 1, 28, 28) and y.shape == (10_000,)
    assert len(data.shakespeare().text) > 1_000_000
    loader = data.DeviceLoader(x, y, 500, shuffle=False, device="cpu")
    assert len(loader) == 20 and sum(len(b[1]) for b in loader) == 10_000


def test_read_only_book_data_is_never_written(isolated, server, monkeypatch):
    """CI's BOOK_DATA is read-only: the cache and downloads go elsewhere (even as root)."""
    monkeypatch.delenv("BOOK_CACHE")
    isolated.data.chmod(0o555)
    try:
        cache = data.cache_dir()
        assert cache == data._home_data() / "cache" and cache.is_dir()
        (server.root / "hello.txt").write_bytes(GOOD)
        add_tiny_dataset(monkeypatch, server.url + "hello.txt")
        folder = data.fetch("tiny", quiet=True)
        assert folder == cache / "tiny" and (folder / "hello.txt").read_bytes() == GOOD
        assert data.fetch("tiny", quiet=True) == folder and len(server.hits) == 1
        assert not any(isolated.data.iterdir())
    finally:
        isolated.data.chmod(0o755)
    monkeypatch.setenv("BOOK_CACHE", str(isolated.cache))
    assert data.cache_dir() == isolated.cache and isolated.cache.is_dir()


# ---------------------------------------------------------------------------------------
# Corrupt local copies are refused, never loaded
# ---------------------------------------------------------------------------------------

def test_corrupt_local_shakespeare(isolated):
    folder = isolated.data / "tinyshakespeare"
    folder.mkdir()
    (folder / "input.txt").write_text("First Citizen:\nBefore we proceed")  # truncated
    with pytest.raises(ChecksumError) as err:
        data.shakespeare()
    msg = str(err.value)
    assert str(folder / "input.txt") in msg and "86c4e6aa" in msg and "Delete or replace" in msg


def test_corrupt_local_fashion_mnist(book_data, isolated):
    folder = isolated.data / "fashion-mnist"
    shutil.copytree(book_data / "fashion-mnist", folder)
    labels = folder / "train-labels-idx1-ubyte.gz"
    labels.chmod(0o644)
    labels.write_bytes(labels.read_bytes()[:-100])
    with pytest.raises(ChecksumError, match="train-labels-idx1-ubyte.gz"):
        data.fashion_mnist(train=True)


def test_changed_sr_pixels_are_detected(book_data, isolated):
    from PIL import Image

    folder = isolated.data / "sr" / "Set5"
    shutil.copytree(book_data / "sr" / "Set5", folder)
    path = folder / "bird_GT.png"
    path.chmod(0o644)
    img = np.array(Image.open(path))
    img[0, 0] ^= 1  # one pixel, one bit
    Image.fromarray(img).save(path)
    with pytest.raises(ChecksumError, match="decoded-content sha256"):
        data.sr_images("set5")


def test_corrupt_cifar10_archive(isolated):
    folder = isolated.data / "cifar10"
    folder.mkdir()
    (folder / "cifar-10-python.tar.xz").write_bytes(b"not an archive")
    with pytest.raises(ChecksumError, match="cifar-10-python.tar"):
        data.cifar10()


def test_extract_refuses_path_traversal(tmp_path):
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        payload = b"owned"
        info = tarfile.TarInfo("pkg/../../evil.txt")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    with pytest.raises(ChecksumError, match="unsafe"):
        data._extract(archive, tmp_path / "out" / "pkg", "pkg/")
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "out" / "pkg").exists()


def test_extract_once_with_marker(tmp_path):
    archive = tmp_path / "a.tar.xz"
    with tarfile.open(archive, "w:xz") as tar:
        for name, payload in [("pkg/x.txt", b"x"), ("pkg/sub/y.txt", b"y"), ("other/z", b"z")]:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    out = data._extract(archive, tmp_path / "out", "pkg/")
    assert (out / "x.txt").read_bytes() == b"x" and (out / "sub" / "y.txt").read_bytes() == b"y"
    assert not (out / "z").exists()
    (out / "x.txt").write_bytes(b"changed")  # a second call trusts the marker: no re-extraction
    data._extract(archive, out, "pkg/")
    assert (out / "x.txt").read_bytes() == b"changed"


# ---------------------------------------------------------------------------------------
# Loaders on the real data (BOOK_DATA)
# ---------------------------------------------------------------------------------------

def test_cifar10(book_data):
    x, y = data.cifar10(train=True)
    assert x.shape == (50_000, 3, 32, 32) and x.dtype == torch.uint8
    assert y.shape == (50_000,) and y.dtype == torch.int64
    assert torch.bincount(y, minlength=10).tolist() == [5_000] * 10
    # mean over N, H, W per channel, exactly (integer sums), on the 0..1 scale
    mean = x.sum(dim=(0, 2, 3), dtype=torch.int64).double() / (50_000 * 32 * 32 * 255)
    assert torch.allclose(mean, torch.tensor(data.CIFAR10_MEAN, dtype=torch.float64), atol=1e-6)
    xt, yt = data.cifar10(train=False)
    assert xt.shape == (10_000, 3, 32, 32) and torch.bincount(yt).tolist() == [1_000] * 10
    assert len(data.CIFAR10_CLASSES) == 10 and len(data.CIFAR10_STD) == 3
    assert data.cifar10(train=False)[0] is xt  # cached in-process


def test_cifar10_from_extracted_folder(book_data, monkeypatch, tmp_path):
    """An already-extracted cifar-10-batches-py/ is accepted (after its content check)."""
    xt, yt = data.cifar10(train=False)
    batches = data._cifar10_batches(quiet=True)  # the extraction the line above used
    assert (batches / ".complete").is_file()
    folder = tmp_path / "cifar10"
    folder.mkdir()
    (folder / "cifar-10-batches-py").symlink_to(batches, target_is_directory=True)
    monkeypatch.setenv("BOOK_DATA", str(tmp_path))
    assert data._cifar10_batches(quiet=True) == folder / "cifar-10-batches-py"
    x2, y2 = data.cifar10(train=False)
    assert torch.equal(x2, xt) and torch.equal(y2, yt)


def test_fashion_mnist(book_data):
    x, y = data.fashion_mnist(train=True)
    assert x.shape == (60_000, 1, 28, 28) and x.dtype == torch.uint8
    assert y.shape == (60_000,) and y.dtype == torch.int64
    assert torch.bincount(y).tolist() == [6_000] * 10
    mean = x.sum(dtype=torch.int64).item() / (x.numel() * 255)
    assert abs(mean - data.FASHION_MNIST_MEAN[0]) < 1e-6
    xt, yt = data.fashion_mnist(train=False)
    assert xt.shape == (10_000, 1, 28, 28) and yt.shape == (10_000,)
    assert len(data.FASHION_MNIST_CLASSES) == 10


def test_shakespeare(book_data):
    c = data.shakespeare()
    assert c.vocab_size == 65 == len(c.vocab) and c.vocab == sorted(c.vocab)
    assert len(c.text) == 1_115_394
    s = "To be, or not to be?"
    assert c.decode(c.encode(s)) == s and c.encode(s).dtype == torch.int64
    assert len(c.train_ids) == int(0.9 * len(c.text))
    assert len(c.train_ids) + len(c.val_ids) == len(c.text)
    assert c.decode(c.train_ids[:14]) == c.text[:14]
    assert c.decode(c.val_ids[-20:]) == c.text[-20:]
    with pytest.raises(ValueError, match="not in the vocabulary"):
        c.encode("€")


@pytest.mark.parametrize("name, n", [("Set5", 5), ("Set14", 14), ("t91", 91)])
def test_sr_images(book_data, name, n):
    images = data.sr_images(name)
    assert len(images) == n
    for img in images:
        assert img.dtype == torch.uint8 and img.dim() == 3 and img.shape[0] == 3
    if name == "Set14":
        names = sorted(p.stem for p in (book_data / "sr" / "Set14").glob("*.png"))
        bridge = images[names.index("bridge")]
        assert torch.equal(bridge[0], bridge[1]) and torch.equal(bridge[1], bridge[2])


# ---------------------------------------------------------------------------------------
# Device-side batches and augmentation (CPU here; the same code runs on a GPU)
# ---------------------------------------------------------------------------------------

def id_images(n: int = 37, c: int = 3, h: int = 8, w: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Random uint8 images whose label is their index, so each sample can be traced."""
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=g), torch.arange(n)


def test_device_loader_shapes_and_len():
    x, y = id_images()
    loader = data.DeviceLoader(x, y, 10, device="cpu")
    assert len(loader) == 4
    batches = list(loader)
    assert [len(b[1]) for b in batches] == [10, 10, 10, 7]
    xb, yb = batches[0]
    assert xb.shape == (10, 3, 8, 8) and xb.dtype == torch.float32 and yb.dtype == torch.int64
    assert 0 <= xb.min() and xb.max() <= 1
    assert len(data.DeviceLoader(x, y, 10, drop_last=True, device="cpu")) == 3
    assert [len(b[1]) for b in data.DeviceLoader(x, y, 10, drop_last=True, device="cpu")] == [10] * 3


@pytest.mark.parametrize("kwargs", [{}, {"crop_padding": 2, "flip": True, "cutout": 3}])
def test_device_loader_every_sample_once_per_epoch(kwargs):
    x, y = id_images()
    loader = data.DeviceLoader(x, y, 8, device="cpu", **kwargs)
    for _ in range(2):
        seen = torch.cat([yb for _, yb in loader])
        assert sorted(seen.tolist()) == list(range(37))
    assert [yb for _, yb in data.DeviceLoader(x, y, 8, shuffle=False, device="cpu")][0].tolist() \
        == list(range(8))


def test_device_loader_normalizes_and_eval_does_not_augment():
    x, y = id_images()
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    loader = data.DeviceLoader(x, y, 37, shuffle=False, flip=True, crop_padding=4, cutout=4,
                               mean=mean, std=std, device="cpu")
    assert not loader.augment
    xb, yb = next(iter(loader))
    ref = (x.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(xb, ref, atol=1e-6) and torch.equal(yb, y)


def test_flip_gives_the_image_or_its_mirror():
    x, y = id_images(n=200)
    xb, yb = next(iter(data.DeviceLoader(x, y, 200, flip=True, device="cpu")))
    src = x[yb].float() / 255
    same = (xb == src).flatten(1).all(1)
    mirrored = (xb == src.flip(3)).flatten(1).all(1)
    assert (same | mirrored).all()
    assert 0.3 < mirrored.float().mean() < 0.7  # p = 0.5
    assert torch.allclose(xb.mean(), src.mean())  # a flip only moves pixels


def test_random_crop_shifts_content():
    p = 2
    img = torch.arange(1, 1 + 6 * 6, dtype=torch.float32).view(1, 1, 6, 6)
    x = img.repeat(3, 1, 1, 1)
    out = data.random_crop(x, p, offsets=torch.tensor([[0, 0], [p, p], [2 * p, 2 * p]]))
    # offset (0, 0): content moves down-right by p, zeros come in at the top and left
    assert torch.equal(out[0, 0, p:, p:], img[0, 0, :-p, :-p])
    assert (out[0, 0, :p] == 0).all() and (out[0, 0, :, :p] == 0).all()
    assert torch.equal(out[1], img[0])  # offset (p, p): unchanged
    assert torch.equal(out[2, 0, :-p, :-p], img[0, 0, p:, p:])  # up-left
    refl = data.random_crop(img, p, mode="reflect", offsets=torch.tensor([[0, 0]]))
    assert refl[0, 0, 0, 0] == img[0, 0, p, p] and torch.equal(refl[0, 0, p:, p:], img[0, 0, :-p, :-p])


def test_loader_crops_are_shifts_of_the_image():
    p = 2
    x, y = id_images(n=50)
    xb, yb = next(iter(data.DeviceLoader(x, y, 50, crop_padding=p, device="cpu")))
    src = x[yb].float() / 255
    candidates = torch.stack([  # every possible shift: (2p+1)^2 of them, (S, B, C, H, W)
        data.random_crop(src, p, offsets=torch.tensor([[dy, dx]] * 50))
        for dy in range(2 * p + 1) for dx in range(2 * p + 1)])
    matches = (candidates == xb).flatten(2).all(2)  # (S, B)
    assert matches.any(0).all()
    assert matches.float().argmax(0).unique().numel() > 5  # offsets really vary


def test_cutout_zeroes_one_square():
    x = torch.ones(64, 3, 16, 16)
    out = data.cutout(x, 4, generator=torch.Generator().manual_seed(0))
    zeros = (out == 0).all(1)  # (B, H, W): every channel zero
    assert torch.equal((out == 0).any(1), zeros)
    counts = zeros.flatten(1).sum(1)
    assert (counts >= 1).all() and (counts <= 16).all() and (counts == 16).any()
    rows, cols = zeros.any(2), zeros.any(1)  # the zero set is a rectangle
    assert torch.equal(counts, rows.sum(1) * cols.sum(1))


def test_device_loader_is_deterministic_with_a_generator():
    x, y = id_images()

    def epoch(seed):
        loader = data.DeviceLoader(x, y, 16, crop_padding=2, flip=True, cutout=2, device="cpu",
                                   generator=torch.Generator().manual_seed(seed))
        return list(loader)

    a, b, c = epoch(1), epoch(1), epoch(2)
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert not torch.equal(a[0][1], c[0][1])


def test_device_loader_float_input_and_channels_last():
    x, y = id_images()
    xf = x.float() / 255 - 0.5
    xb, _ = next(iter(data.DeviceLoader(xf, y, 37, shuffle=False, channels_last=True, device="cpu")))
    assert torch.equal(xb, xf) and xb.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="already normalized"):
        data.DeviceLoader(xf, y, 8, mean=(0.5,) * 3, std=(0.2,) * 3, device="cpu")
    with pytest.raises(ValueError, match="one per channel"):
        data.DeviceLoader(x, y, 8, mean=(0.5,), std=(0.2,), device="cpu")


def test_token_batches():
    ids = torch.arange(1000)
    batches = data.TokenBatches(ids, block_size=16, batch_size=8, steps=5, device="cpu",
                                generator=torch.Generator().manual_seed(0))
    assert len(batches) == 5
    pairs = list(batches)
    assert len(pairs) == 5
    for x, y in pairs:
        assert x.shape == y.shape == (8, 16) and x.dtype == y.dtype == torch.int64
        assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y, x + 1)  # shifted by one
        assert x.min() >= 0 and y.max() <= 999
        assert y.is_contiguous()
    again = data.TokenBatches(ids, 16, 8, steps=5, device="cpu",
                              generator=torch.Generator().manual_seed(0)).sample()
    assert torch.equal(again[0], pairs[0][0])
    with pytest.raises(ValueError, match="block_size"):
        data.TokenBatches(torch.arange(10), 16, 2, steps=1, device="cpu")


def test_token_batches_with_a_host_generator_copy_once_per_epoch():
    """A CPU generator feeding another device: all starts of an epoch in one transfer, the
    same windows as drawing them batch by batch (the CPU stream is consumed in order)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    ids = torch.arange(1000)
    one_by_one = data.TokenBatches(ids, 8, 5, steps=7, device="cpu",
                                   generator=torch.Generator().manual_seed(3))
    expected = [one_by_one.sample() for _ in range(7)]
    starts = torch.randint(1000 - 8, (7, 5), generator=torch.Generator().manual_seed(3))
    for (x, y), s in zip(expected, starts):
        assert torch.equal(x[:, 0], s) and torch.equal(y[:, 0], s + 1)
    iterated = list(data.TokenBatches(ids, 8, 5, steps=7, device="cpu",
                                      generator=torch.Generator().manual_seed(3)))
    assert len(iterated) == 7 and all(torch.equal(a[0], b[0]) for a, b in zip(expected, iterated))

    class Copies(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is torch.ops.aten._to_copy.default and args[0].device.type == "cpu" \
                    and str(kwargs.get("device", "cpu")) == "meta":
                Copies.n += 1
            return func(*args, **kwargs)

    on_meta = data.TokenBatches(torch.empty(1000, dtype=torch.long, device="meta"), 8, 5,
                                steps=7, device="meta", generator=torch.Generator().manual_seed(3))
    with Copies():
        batches = list(on_meta)
    assert len(batches) == 7 and batches[0][0].shape == (5, 8) and Copies.n == 1


def test_subset_is_balanced_and_ordered():
    y = torch.arange(1000) % 10
    x = torch.arange(1000).view(-1, 1, 1, 1)
    xs, ys = data.subset(x, y, 105, seed=3)
    assert len(ys) == 105 and torch.bincount(ys).tolist() == [11] * 5 + [10] * 5
    idx = xs.flatten()
    assert torch.equal(y[idx], ys) and (idx.diff() > 0).all()
    assert torch.equal(data.subset(x, y, 105, seed=3)[0], xs)
    assert not torch.equal(data.subset(x, y, 105, seed=4)[0], xs)
    assert len(data.subset(x, y, 7, stratified=False)[1]) == 7
    with pytest.raises(ValueError):
        data.subset(x, y, 2000)


def test_char_corpus_from_text():
    c = data.CharCorpus.from_text("hello world" * 10)
    assert c.vocab == sorted(set("helo wrd")) and c.vocab_size == 8
    assert c.decode(c.encode("world")) == "world" and c.decode([0, 1]) == "".join(c.vocab[:2])
    assert len(c.train_ids) == 99 and len(c.val_ids) == 11
    assert "vocab_size=8" in repr(c)


def test_minilib_exposes_data():
    assert ml.data is data
