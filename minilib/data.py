"""Datasets: where they live, how we know they are right, and how they reach the GPU.

The book trains on real benchmarks only. This module knows, for each one, its official
URL and checksums (:data:`DATASETS`), finds a local copy or downloads it (:func:`fetch`),
checks it, and loads it as tensors::

    x, y = ml.data.cifar10(train=True)          # uint8 (50000, 3, 32, 32), int64 (50000,)
    corpus = ml.data.shakespeare()              # CharCorpus: text, vocab, encode/decode
    hr = ml.data.sr_images("Set5")              # list of uint8 (3, H, W)

Where data is looked for, in order (:func:`search_paths`):

1. ``$BOOK_DATA`` (CI and offline machines point it at a folder of local copies);
2. the repository's ``data/`` folder, when minilib sits in a checkout of the book;
3. ``~/.cache/efficient-dl-from-scratch/data`` (Colab, ``pip install``);
4. for Fashion-MNIST, ``/usr/share/datasets/fashion-mnist`` (Debian's
   ``dataset-fashion-mnist`` package).

Some local copies are content-identical to the official files but not byte-identical
(CIFAR-10 rebuilt into the official pickles and shipped as ``.tar.xz``; Fashion-MNIST
images recompressed by Debian; super-resolution images as PNG instead of BMP). So a file
passes if it matches *any* identity we know for it: the sha256 of its bytes, its published
md5, or the sha256 of its decoded content (decompressed bytes, or decoded pixels).
Nothing unverified is ever loaded silently; a missing dataset raises one error that says
what is missing, where we looked and how to fix it.

GPU training on small images is easily starved by Python-side data loading.
:class:`DeviceLoader` keeps the whole dataset on the device as uint8 and does shuffling,
normalization and augmentation there, vectorized over the batch; :class:`TokenBatches`
does the same for language-model windows.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.client
import math
import os
import pickle
import shutil
import struct
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from .env import device as default_device

__all__ = [
    # errors
    "DatasetNotFoundError", "ChecksumError",
    # where data lives
    "data_root", "search_paths", "cache_dir", "display_path",
    # registry and download
    "DataFile", "Dataset", "DATASETS", "fetch",
    # loaders
    "cifar10", "CIFAR10_CLASSES", "CIFAR10_MEAN", "CIFAR10_STD",
    "fashion_mnist", "FASHION_MNIST_CLASSES", "FASHION_MNIST_MEAN", "FASHION_MNIST_STD",
    "mnist", "MNIST_MEAN", "MNIST_STD",
    "shakespeare", "CharCorpus",
    "sr_images", "SR_SETS",
    # batches on the device
    "DeviceLoader", "TokenBatches", "subset", "random_crop", "random_flip", "cutout",
]

APP = "efficient-dl-from-scratch"


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is neither on disk nor downloadable from here."""


class ChecksumError(ValueError):
    """A file or its decoded content does not match the checksum we know for it."""


# ---------------------------------------------------------------------------------------
# Where data lives
# ---------------------------------------------------------------------------------------

def _checkout() -> Path | None:
    """The book's repository root when minilib sits in a checkout (it has ``_toc.yml``)."""
    repo = Path(__file__).resolve().parent.parent
    return repo if (repo / "_toc.yml").is_file() else None


def _home_data() -> Path:
    return Path.home() / ".cache" / APP / "data"


def _writable(path: Path) -> bool:
    """Could we create files in ``path`` (creating it first if needed)?

    We look at the nearest folder that exists. Besides ``os.access`` we require a write
    bit in its mode: as root ``os.access`` says yes to everything, but a folder someone
    made read-only (``chmod a-w``, as CI does with ``BOOK_DATA``) should stay untouched.
    """
    p = path
    while not p.exists():
        if p.parent == p:
            return False
        p = p.parent
    return p.is_dir() and os.access(p, os.W_OK | os.X_OK) and bool(p.stat().st_mode & 0o222)


def data_root() -> Path:
    """The folder downloads land in.

    ``$BOOK_DATA`` if set; else the repository's ``data/`` when minilib sits in a checkout;
    else ``~/.cache/efficient-dl-from-scratch/data`` (Colab, pip installs).
    """
    if os.environ.get("BOOK_DATA"):
        return Path(os.environ["BOOK_DATA"]).expanduser()
    repo = _checkout()
    return repo / "data" if repo is not None else _home_data()


def _cache_path() -> Path:
    if os.environ.get("BOOK_CACHE"):
        return Path(os.environ["BOOK_CACHE"]).expanduser()
    candidates = [data_root() / "cache"]
    if (repo := _checkout()) is not None:
        candidates.append(repo / "data" / "cache")
    candidates.append(_home_data() / "cache")
    return next((c for c in candidates if _writable(c)), candidates[-1])


def cache_dir() -> Path:
    """A writable folder for derived files (extracted archives, trained models); created.

    ``$BOOK_CACHE`` if set; else ``data_root()/cache`` if writable; else the repository's
    ``data/cache`` (in a checkout); else ``~/.cache/efficient-dl-from-scratch/data/cache``.
    ``BOOK_DATA`` may be read-only (it is in CI), so nothing is ever written there
    unless it is writable.
    """
    path = _cache_path()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _relative_to(path: Path, base: Path) -> str | None:
    try:
        return path.relative_to(base.expanduser().resolve()).as_posix()
    except ValueError:
        return None


def display_path(path: str | Path) -> str:
    """``path`` as a notebook may print it: relative to the data folder, never absolute.

    Stored notebooks must not show the machine they ran on (``/home/...``, ``/root/...``),
    and the same run on another machine must print the same text. So a file in the cache
    is shown relative to :func:`cache_dir` (``models/cifar_cnn-cpu-<hash>.pt (in the data
    folder)``; ``(in $BOOK_CACHE)`` when that variable placed the cache), a file under a
    data root relative to it (``cifar10/cifar-10-python.tar.gz (in the data folder)``),
    one in the home folder as ``~/...``, and anything else by its file name only.
    """
    p = Path(path).expanduser().resolve()
    roots = search_paths()
    cache = _cache_path()
    rel = _relative_to(p, cache)
    if rel is not None:
        if os.environ.get("BOOK_CACHE"):
            return f"{rel} (in $BOOK_CACHE)"
        inside = any(_relative_to(cache.expanduser().resolve(), r) is not None for r in roots)
        return f"{rel} (in the data folder)" if inside else f"{rel} (in the cache folder)"
    for root in roots:
        if (rel := _relative_to(p, root)) is not None:
            return f"{rel} (in the data folder)"
    if (rel := _relative_to(p, Path.home())) is not None:
        return f"~/{rel}"
    return p.name


def _download_root() -> Path:
    """Where :func:`fetch` puts downloads: ``data_root()`` if writable, else the cache."""
    root = data_root()
    return root if _writable(root) else _cache_path()


def search_paths(name: str | None = None) -> list[Path]:
    """The places data is looked for, in order.

    Without ``name``: the data roots, ``$BOOK_DATA`` (if set), the repository's ``data/``
    (in a checkout) and the home cache. With a dataset ``name``: the folders that
    dataset's files are looked for in, i.e. ``<root>/<dataset folder>`` for each root, then
    the download folder when it is elsewhere (``data_root()`` read-only), then system
    folders (``/usr/share/datasets/fashion-mnist`` for Fashion-MNIST).
    """
    roots: list[Path] = []
    if os.environ.get("BOOK_DATA"):
        roots.append(Path(os.environ["BOOK_DATA"]).expanduser())
    if (repo := _checkout()) is not None:
        roots.append(repo / "data")
    roots.append(_home_data())
    if name is None:
        return _unique(roots)
    ds = _dataset(name)
    folders = [r / ds.folder for r in roots]
    folders.append(_download_root() / ds.folder)
    folders += [Path(d) for d in ds.system_dirs]
    return _unique(folders)


def _unique(paths: list[Path]) -> list[Path]:
    seen: set[Path] = set()
    out = []
    for p in paths:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


# ---------------------------------------------------------------------------------------
# The registry
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DataFile:
    """One file of a dataset and every identity we know for a good copy of it.

    A copy passes if it matches any known identity: ``sha256`` (of the bytes as
    downloaded), ``md5`` (published by the source when no sha256 is known), or
    ``content_sha256``: sha256 of the *decoded* content, i.e. the decompressed bytes of a
    ``.gz``, or ``repr(shape) + pixels`` of an image decoded to RGB uint8 ``(H, W, 3)``.
    A copy with no known identity (BSD100) is checked by its loader only.

    ``path`` is relative to the dataset's folder; a trailing ``/`` means a folder.
    ``alternatives`` are other local forms accepted instead (an ``.xz`` recompression,
    an extracted folder, PNG instead of BMP); only ``path`` itself is downloaded.
    """

    path: str
    url: str | None = None
    sha256: str | None = None
    md5: str | None = None
    content_sha256: str | None = None
    alternatives: tuple["DataFile", ...] = ()

    @property
    def has_checksum(self) -> bool:
        return bool(self.sha256 or self.md5 or self.content_sha256)


@dataclass(frozen=True)
class Dataset:
    """A dataset: its folder under a data root, its files and how its content is checked."""

    name: str
    folder: str                      # under a data root, e.g. "cifar10", "sr/Set5"
    files: tuple[DataFile, ...]
    description: str                 # what it is, the citation, offline or download-only
    homepage: str
    check: str                       # what is verified beyond the per-file checksums
    system_dirs: tuple[str, ...] = ()  # folders holding the files directly (Debian)

    def expected_paths(self, limit: int = 4) -> str:
        """The relative paths a data root must contain, for error messages."""
        def one(f: DataFile) -> str:
            return " or ".join(f"{self.folder}/{v.path}" for v in (f, *f.alternatives))
        shown = [one(f) for f in self.files[:limit]]
        if len(self.files) > limit:
            shown.append(f"... ({len(self.files)} files, see ml.data.DATASETS[{self.name!r}])")
        return ", ".join(shown)


_CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"  # the mirror torchvision uses
_SHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
# SRCNN-Tensorflow ships Set5, Set14 and T91 as BMP; pinned to the commit the offline
# PNG copies were converted from (it is also the tip of master).
_SRCNN_URL = (
    "https://raw.githubusercontent.com/tegg89/SRCNN-Tensorflow/"
    "78be1a24697935fc39a3a8cf59a6632264afade7/"
)
_BSDS300_URL = (
    "https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/bsds/BSDS300-images.tgz"
)

# Set5, Set14, T91: `<set>/<image>  <sha256 of the .bmp download>  <sha256 of the pixels>`.
# The pixel hash is the same for the BMP and for the pixel-identical PNG copies
# (checked against tegg89/SRCNN-Tensorflow@78be1a24 and the offline PNG copies).
_SR_TABLE = """
Set5/baby_GT      199806aa411249a8f179fe5598bed0766d92bf7fe5ff388522e4d8d997bd2fd4 ae793a5a365b92ac15d44b2abe239c991713ccd1a2a682fdc602dbb13d2f6874
Set5/bird_GT      498f50e8907f2421969d893aff61ee1a7c4aae23cb76452728a90e97c2889fb3 3e70746eea4bc9318dcfd9124da8a62020e783b45ad70e25f550a7acc65d0c42
Set5/butterfly_GT 43534bd9f59f06ac7b0d6c8b991137baa4c764b8241a5bd1136b9dd810f4dba2 fc21d3138b4ac37e1e2ce9505726edd45dc9e1363d7f077da599d70442baafbd
Set5/head_GT      959f9ac5ceacfd7648e7f0bfa6fbbd626b141d3e61e41dddd3e2593acfd3ac0b 0241d09e606b14bcba61aa990b360334c73e9d35b22f0a62cf486ea2094b230d
Set5/woman_GT     2ab3c594c057d80c2f339c9be0bf6fb81487ce650562b60c2ad8cd816d509f56 c4327fda42649bac0ff73c88fe5aaf3ae835354590995c4550469ad5d5cfe41d
Set14/baboon      8650f437b5186197a4f09475a685170a3ff619cfb60bd2702b9b07d168a390f2 d9893f0fd7841773595836b2c88388c32bcb64b955d9002daaae5c79f16b43c8
Set14/barbara     74d78e6e9b2c82a920bba716ef1e133ff79cfbdc5f010ed75023f2f7b5458b68 ad60bfa9481060e039aee5cd1736ebd5bf3ed5daa1ee9ddf7b9079427fadc7f2
Set14/bridge      9e762cf7a2b2508936458307ab811fce87a9a6df036fbbead35e6d41f9f5cd0d f16a506286fda77eaa76a7afdca9e6e82aff56e55e219731295be2f88fe9cd17
Set14/coastguard  1c33308da91106ba4299d9f451b4d614c542281446062be3b967cb40a1826698 548e5e42a8f865ca45e819201f00ababf393708f1b3248d14bb6107a7ff3478d
Set14/comic       e3764ad96ea4e9903fc104d99b160577818d3c13d1039c09bc0e205b5a25c592 92498fea556d3c46005c1f0f0265bbc631ed36ed3434071898c9b42d7bfad554
Set14/face        c33385916557a2224c4bc296247292b4861f6a9a411a59f453755c99993722e4 4e7d455043f7815e0d46eb4508160ce9995a561065ccbc219df66d1d41a685bc
Set14/flowers     fb07dd3e1202c2b8f268304ae95f7a126f11d26b034054e1ed216856264178a3 94c3f3dfd816518081cdb9af1903fa649e29eb36ad799bccd1626020e12ca26c
Set14/foreman     97574e5993ad5d4490c70cac89b68b24dd7553035e8deec53c6b5195bf17d57c 1c2ec76a36abdd454f0603cb3c6ccaaf7146f1eea558b379f14e66817825c11f
Set14/lenna       ef6754b751398420d22977afbe731c7fcb032dc49547004d4852ec0aa2134ded 96e34308ef3ccb1c252d1b903550ef80e372370be17bced6ac9bd0437008ed84
Set14/man         11a53388b5f697aaa702026395ed576beb18981dd88447dbd193cca4427ee883 5269b00c34951b6ebeea42b27ed2a09ab24b6eded8eb3361f3fc2a13fa5fcf7d
Set14/monarch     174ef56bab333846b511eb60d85be4edd6696271c59a3f80edcb143400827054 4a7b9dc3aa9f3ec169df9eeab5b44c1b4af861b522a140a7d3ba7b87e9860489
Set14/pepper      53d9c421dc1e5be18fa01bb18252fb8997663a1e340780e0cecd045240d6eafc 811986891addd496d9e7528d58536cfa9cab860b9844fdeef396929ac3101745
Set14/ppt3        fae917d0709489e864737ab637abd821089fd52d5ec8a4107c46f5ec0a63becd 962e2ce53f18bbafc6c6f510d8699b5dd2e1fc25c65e10ca6765ccc0381a2d7f
Set14/zebra       d563f2b305a4e45a0ecead76344264dcb23396ced723e3f1c5caed30d82df805 ac7238fe387073fb1dc0a53f255b08b0d30b4f3c9d3eeec582cf2dabf7306ab6
T91/t1            bd05fe477d92b3aa241994cf47a5f6d10284d1699032383e5766ad28d6eff71f c68b53b8b79810bfeb909c5c2c4e31625f35df7925e7fdfbdf44e559624292b3
T91/t10           e8fc08afbbb00b9f421da26ad0beac690740876e7539e6060a60c8c6fb89ddcc 1f53b1d2d6f1618e7b1e75591578b872f18158e297172b3f7f371bf0fe9d13e7
T91/t11           cf814011d1b663bbcf7d27d112934ce14bb476de902613662f2e29573295a583 71cf9a7a7a1f74fa2e606c8a747e3307dce1058be6085441b97206681f1f05d1
T91/t12           f3bc2de47391e38d832d8a62ed8d373b046787e599778efedcf4193e5587241e 52763689e0de692045395eacc94d7154932a0a2d4055c4d7ca20fc2e1ec9389e
T91/t13           5f551d7e84f3bab49b5fb2e597d29b3920bbad03bdbb3b898884f0be17e96439 8d73e490974cac1aa8a0432c6169b025325f7c64837fa47947b778ca1ab16ce8
T91/t14           8c426fa5b413e14213ef7fbb71176cc5cf9c385b0cd9c199b0aa80d4ee326ebd 96ed8bde840e41e1d4197b0c42aa50073462ba030584a334b4dfba8e96e233b5
T91/t15           ce01dbce740da6f44cb351062daa8ccace91188fe4edf7b408900b58b9f0de13 c0eb787ee3093c8c1e0062d02c23939d002879b95c92a474db50cd7bbae91eb7
T91/t16           594bcc141fa2c8d03cd4927b8e53d3a3b328d4523d083933cd249c9d9f81b13f c0079e8fb7c7b0a32393f263827a4b78f4e005d4f4ba91dad68c0b459b24becb
T91/t17           5350a3dc65ace9f753d8ad2b00395b8d2aeb167296481e8ec5392cf288c024ef bdc51ee6ffea7dcf7e0db12d88fae5ddcbd4797eac91135f6cb0556e97aab515
T91/t18           9345e8d5fc59336482fb3f90fe1e4a4a050da39a7a2d81a854abee9bcb86400a 7c4837b0c13f1d9e8a6ae576bbb6a2fdf1ce8abb6cc0afb65a1bb3b9415bea27
T91/t19           6639057c940889eebe3d2dbdcc993659090fc868aea550285318ce464de5cf1a 30f7dece95d8d061cfc541e9a5b61aab21a4fd3f3e84e704f7ac9c4f020e7c1c
T91/t2            07530d9e4f591cf8c3d265b8ca5a937eaadf5212be27fff694214870422cc3b6 907079ce33b53bdf23361271e9b449329c45b1e2e1eacb6d7b79c1268830655e
T91/t20           39a2b362d128edcaa98d88e8d86d7a661f6259c948a171cf1d3bb0e4df901c55 ce3db3e34becd5821d3d79e3a5c1336487ca8a03a6ba385ab135a9971a6e89b0
T91/t21           fb0beade57a0e52da0933de638e0ae828f6fb52ce1181ddd4f2fe7cff045d64e d9d463e56db8e9896cee235545ef8b352c5ba619cdc25f92cc139fdd4397f39a
T91/t22           87630a34c0ab5549d5823426748d77191b3c2dd317f086d6b440f9f62e3be692 b2815bdf283103bed6d9c461be237407e595b9e2fa419cad5fa4a6046402adfb
T91/t23           460529492d4566a3fd9fc7d6a63b01a8b8c569533a920743462de6097b86ce7a 7346e0c109b38b480bfabf531ee00c7aaac6de6a3020cd858f1f9e77315ae034
T91/t24           df30507540996b48aea464e9b93534589bace076def6ee7b8012aba5d271f56a cc099350c73269e139567919f568dde0f0ad781370d04458bfbc174bc1832b5d
T91/t25           0cf73f85d53a03a24dca91375a1a06ec05472d228c197bea1084a5411322d063 73e8627f0ec0b2a31584fc27de021e4529cac270682fb43475088daca97c5425
T91/t26           980a88ff7f17e773eff1f118b87b54727c18f2dadd557b909f47eba7223f140d 91bc50aec5cc27b5ee53400f016dab5a8c520cd6430936faabca7d926a5824f0
T91/t27           70d8212bd5b89604a66dfb813f519768e24f860f606a41dde0e36330ed41a5d5 84bd03af2312ffe12be3a088918730243dc6b38e643a561d8d43b332d41c5bad
T91/t28           9d0fe6e4976fdaefc0a597c24c5a47b4001967cc55058d2ac991ccbdfdd8e5d3 745638fdd572444b71a8b0b7bddd48e3f59325eaeabce575477db6f6ad23ec9c
T91/t29           33b75efca22b76b3db434351c47cdb4fbb088ef39ada7d5b89518233abba242f b0729c021737d34e23b7086e7d839a25b0e96bb742245fc0cdabbc52bd8bcc95
T91/t3            5f67079bdd259d73214a48ae666e16d596f81503c886cb3f5937a8f91d3b48e5 29f7b653f34dff64c172fa81c9ac88f9adf66292e4e5c94248d2974d8b624798
T91/t30           aca3633130f6ba454aa1786d0a4b538f565491f05d0c5ef63e2e78df34c24539 bb9ca6d2fadb78e97160fa598553dd49f625a0f016e8637827999ddb494e8188
T91/t31           0ab8dd6051b55d5fe2ac1b0f13fbc107cde69456e33ce34be707d8c5f5336b08 cf75206adf81863a79fc6f71eb49c53915c153619903fa44ca1f69a10607ea64
T91/t32           8ed49320e99808f3b0d3954169b45896421dcbbfeed677154403b99d3fb38980 e807f49616027edf8215888f51cef5a18ad69043972963abd2946b8ce0c1d26c
T91/t33           e74c567e37afaa350d277f0116141b53ffddeddb032e494aae24589efbf1178a 06c06935c0518b715d613abc3c71e2a3c2985783562e78ae12f87278e4631431
T91/t34           1404677d01ebbc0d243b9b6c126410c58578b33b80655d48536e06ff70011d4c 4cfe3164b71cebc0cd54c3a73dbcba98e679e6335059af9ed89a3aa8be8e4e3a
T91/t35           0630c1f764752a84a94eff48517d41574aefa9068d0ca49f8e614354e933d8cc 38152e615461451b55ff69e3c70c07b2c3aeb84d0dc03705fc4761b9d6540fb6
T91/t36           1c628e04ddb923bad98f310aadf1ec140291edd99056c5f78d9ed94e92e6f257 02be264725719150efa3c1376da10f32bcdff0dffc3ddd96e70fe87c21b3820e
T91/t37           0be67e122259e02748b823e20766e6db931f1f58835491fff941785b36cbcf11 53cb6486755e577795fcfb49462638bc32bdc2b148af07564a847222930be198
T91/t38           3be95aa1e4abdce2ecd56c60f4e0c15bfe0a7375d1b4cb4a5d38cf85ac01143a c54681c19a83d2497e2dc96d54a3379a374041ee78dd0e5a1b7968dee5df08d3
T91/t39           b3b8bd124e9f67f6de5c82159d646c0258780b6e715226f07bbfe37933b474d2 69ec05841513ed2e7111da74e25270efbef228067f38f71756540e233a6cdfb7
T91/t4            3f3a2b46fc984921f3a43aac7a5af48a8ea84d9339df22a8f16fd94ff803c475 69620a587e2c99052d8e9fca686b44884e4373ab53b11400b4fad7457bd0187f
T91/t40           f85064cb4fee2e866d55da2e7e10295357e4acbd279ae9e5901ac34eb43e68e5 33e876c85a7886650ac9645884cf1c2be9ba088363596962a193974d7d3f3f83
T91/t42           2c6b199625ad8ce4bfeacfd24ecd03eedce68b40c4201604fd33c8d856ab21ab bff7a962bae2b95e8b9011dae21260c90290fdfedaa83192246fa95188239c11
T91/t43           6d4f5598fd57ffdfb3678bb104ed76a827ecdc546b0da710fc60436650b8624d 721aeac9dbdcbf8e63e2b26f39c0d138e62e7eb9f06dfdd4a6a0452303f1687f
T91/t44           400f6877d88414c35bebc97d4d42d31de26318d877fb035e16ead4c1e4230bb9 028345e3f74d9a5ea182049e0913ecff62c4d20cb0f1dc5fc8e819d8803d1837
T91/t45           b714f0189323ac9a883510a66dc95cc8454946ebda21164d2327fbe62445c8ab 03da0aa4dd4091b189f2a334a6df42653f0b34b1a0ccab261bd42ab68fd8fd9b
T91/t46           4aa6f0d8e586fd2cd6461e1dc6b6e02056cfea49e0c1235fcd9c2cb3db6c492a f6bfdd1ebf0b661f24528c86e7c35f1e14e2d7a20aec3fd92e047424e617ba7f
T91/t47           942a66177a41e51c5dd639d4c43ac4bf57fd318cafca30e7ed37907d47521783 03078db5e531be2c7b5560bc77c1c98b35a4306fc96606f487dfb3d1446c5171
T91/t48           9b2b2294b983a03ec65b2334c6bfa27ddb5d4c94810a4c5c5a125c04f92b3aaf bcdb487a009080a30a9209421d5ea07ef0d106a0a3ba6f05d6f1c4705438168f
T91/t49           132459e1c9973afe47761b209cafb51c4e8b6b04d708f5140bfbe4983caaeb77 f7ac4a48700ccf8a9b6a9aa9b2e05f7b7b3c50b95ec560834fb6b0ef989cb66d
T91/t5            c0f1d5c9c52d1680b24041041ef4809c14e0ba9307b6f5c2e24c818b285e03e3 295e058002ac39066020eb1c420770006ed9c1321f2fdc2a203624eb7a5c4fcb
T91/t50           ff37d26d2192004b3e7e36731c5633df41355d3956efca6503603aca892c41af 1379d1bfd4152d908e9a13348528a3212937de11188b5ad653ca679bb2d086f7
T91/t51           71327d97cb20376e3a2fe36ad2dc7fe6d5d66e62ba8f9d210b62bda816a98702 448b581fab01bcfed67d7673ea3226e9da15bfe272b1d4cffc1e273fe3d53986
T91/t52           70d47b2c410b38f8088933f7f04b77f6824657c0753b03bbee7bfe2097ffac0b 4207fbff8162c772fe5bef30cec79f518d2f519791a924633e12a33b7c6fc9c0
T91/t53           b90877ef69053047456269c5667c9c2258ea0589d275df14a277616b8c4c43c5 22946eafc3b63305f54f7b3abd46e02982e26a4248dc487a5d794d36af3492ec
T91/t54           9660dd86a4c26e0816970d3a15915d27fa4c99ae70b4e6b715be083c5f751875 ff0fb843b84cb08ebe24f3166938e3643a07bd6cbb2dbfcbaf0e3bfc8f54db31
T91/t55           a825655a7e0204bcc32fc639dbceebd1b19683c14bd4e75a654728695ef37dd4 c8b9dddb8d9a1d0de41cbba88167c43e06c7e2418435287a7537b8395561ca86
T91/t56           2a09d5b7d1b2bcdcf33209d46dd3ff4b69008923334517947022d089eb0007f4 a2f3338764257f984742acfbe5732fe0f104e20e12064044665a9e6b83142705
T91/t57           740ccca1f80b2ce0a9ed1d0d9e94c1cd323b089a47bad4605aef16eaa3c77ad9 1bafe6c266f9b0740d02141ca3a7f26c1d13f2ea389b1e01eb7f98c6b2e10750
T91/t58           4c50e113b15c60f538aec523f7de0274dd4059bb4d3d08e234614c38b7e78358 b02831bb3ae1d907c36653c50decdd9264698bf04e908dffe86eaac4d86924a6
T91/t59           efd3270a48e5325f61e9173fbd6bd487431ac8a8d9f263b83113403b91d5426e 56ccd02d5aa2de2382bca975f64fab36977362c78144d14346fac2e5aaa38630
T91/t6            1d20ed01c9c399b00476419b459d12128033c17dac8dacc05ca59bfc365da672 c01a9a5b6a9f3f1260adecef25fc8c119254b8929dc21e3ef898a015d853a3ea
T91/t60           6f93d92cbad459bf30af73d5627f2965156fc4c1997de66ae77f7c33ca599bc4 80be51f6e87ab211d42cbbc61ce82f0246af09e6156491524bb8391b8c876518
T91/t61           bc89907a74c21794db4884b1217f91084df9fd01f844d2d9bf6ac009b550d69f 0002e775e80ce72a296bdb58d765e263f1c381573b7b145a3ecadbca64e19b2e
T91/t62           24c840e9acbe1430af742a61d89e367b6bc5edbd8080737002af6260a48b5fa8 f2ffff0c2ff33a9846f18b78b649259a27a67037c05e08e7dd52882444c1d994
T91/t63           ccd48b87c7e71cd27c4fcc3ab99ff70bfd40a06b5d4d37069efcb433ab3d5b7b 972921d4f285cbe7d968cb9eda7045346550928f5389eb6ff728c6c8bd06db5b
T91/t64           7eb15ab8d32a70f18e528ca40df8e7a055dd5552e1586e0632aeb845abd9442b 2b17e2f57d0b32b0a76e420f7018ba99899ae2892a6dbdddf9cee430932a1e92
T91/t65           1c628e04ddb923bad98f310aadf1ec140291edd99056c5f78d9ed94e92e6f257 02be264725719150efa3c1376da10f32bcdff0dffc3ddd96e70fe87c21b3820e
T91/t66           78efd98a9b89127d06d308d8bfd738ae77d5c087b2500a61b75b86f8ac6afb5b 69c927454b0399b1928dc30e6032c218b6f9dfaa705ef7ef535bfae51b16f4c5
T91/t7            8bf16fd877206e11966f8fc76ded26a457101fe5e39282a20e052f16a0e70787 455a73672681f76a9b1306eec5d54a16a45bd8de54e17cfe25bf332c3b975433
T91/t8            6e41c08509badd906bdd8a750004f98bd8db01058b3efeca0b3c9239d544c5a9 22e34ef600469f61e55319686b40d4935bb5e1e6a177d220999b6273efed18f3
T91/t9            4bc0f253ca708e898f8af77a11358076c78cceae592d64bfebccfecd9b4beaf1 44734311da517840951239f0a0706b02e7d749a5433a135b6a774f5269e2030d
T91/tt1           9f3f752f4cff92961b896473dbf1e171268cb4a2114ffa08608dc201702a563c 138abdecba2f4be439ff83632a76223c6c2cf7aeac49e94248246d6bf3971108
T91/tt10          25e719b9402adf870a185b516e4c06c6af8636b4bcddaf27dd6042b4b25f9364 c9b9009637dfdea56179b39e53e8a7227ac37dc321e9b6c96fae2adad6f5dfec
T91/tt12          6ba67c88ffef87bcafc3e5d8723c35e536553eb724f946afd853a5a3f2f35c7e 31734ace421416d13662a901dde2f828bcf0cedb97ccf2740d7a866ec4926369
T91/tt13          cd333c10b6ed9155553330bde4160348084ffa2fbe73ae02c311c3c161f508b2 a7efa43527f74517f5171515393f9c2fd44d8e3d37dc7eb373e2a77e2a2488fe
T91/tt14          9fb5b5e3acec47eaa445c987bd541eeace90b4e5083f675682bf5f944fdb59a1 5aca12804b7512fc0ad7e333bd6edd65a412e41fc37c241efc824ca3ee7cd046
T91/tt15          5583ad57fd530b24f799385ecd83d6bbf43b35791d083f1314b43fa17da84446 a4a1f4a0b13d21409ac55fa5ffaa7490b429dbd34b6f14565602605e3ad2fc4e
T91/tt16          3c823a83adf28687291899440f777d548c1b95c0def6c48b37a70b37d6284f4e 9c6b566c3a4deaef3b44b16b32fd05b53027a65fa4601a319743b8d87e53dc93
T91/tt17          d9222ee0e9fa51b2119fe91a72015bc97aa11660c2cb06bbbf5b4567dc54eaa3 c795e9f002ea319434091061879863ea4197101c608d8691324eda5007e1c925
T91/tt18          6d861fb17141f137f37ef5e5da365c26fb44e0a5e29c3e51b94a0d2f4b865b42 dc8479c1b6b3b1502081e1992db5ab9068f1604f6c654caaa16c9e51369ef3dc
T91/tt19          43b829fadc643cdebb6f90aab4c397762284cb958ac48099301a085bfefce402 25aac0b24356d8f0f5c846547095def43a99ca8aed48703c658b85bb91569ed3
T91/tt2           396f2ece3c612792d08cbcf7411a7d9d973c454d26e0fd931094de0891b80d92 236d417229bed12ec119865c15341252f03ee7ba0f6c89f46bbf46fc9fdf04a3
T91/tt20          2de65114eec8c7bb1177f82fca2984fdbd734d513fd7712d08a5b4d6214df1e9 430ee657ce7a768d86ad85652a8541268b4bb13ff807d7b85aecb608a004b038
T91/tt21          0631620dc9a1eca76f0b55c40311a903783a72f757105c5aae82edfc7a9ad81d 1073628736e35c85e624d602889bca895c42c9e96dde61e2cc1956e3dfbd3953
T91/tt22          a055857f762b974c52aff8f224f85a472311cbd4f4bacebea9958b7185024828 187b4c81f39fdb3b3f4377bfa1e28f372f59708daf10d869cc8024a7c53526d4
T91/tt23          4dfb0015531c77e3c85b560485ce91bdd515b7a2f6b58c8a5128bf81724d6d67 6bfbb638aad24f1ed1859724d787024703230bd42897bc5ed13f6584907605b9
T91/tt24          d50158cf5d09ede1cab4fa79f15f4c8749381d643494b4689e3eeab31fdd7abe 8ec228f3fb17fc3ba3654b709c5375c866f2f18a2d12c25423197aea76050f14
T91/tt25          7b188db37073dc19590ac75aae0d50990357f88be2a65585d2a355cc66295c35 6441be0eba53416ece470f40bef77ca7c999f02a7c385cf6c8c697be6e98385c
T91/tt26          5e85706af55c13188aae8bdbaf12a152c6377ad4cfe09728297827d17b1a7d60 3c6e38207bd77a7ff3503ab2c7708918fab3629d3cbf2cd738e9d7e245dd6ad1
T91/tt27          84e0380c9392787e253325a036b7e17774ed87583edd1324e88ce91a30018070 ba96a1c35e5a83b9955f4b91817f3d06a6e9f10d312447ff5660484a061aad61
T91/tt3           97134dd606815ff9d2ed720472900e9fe6fa783d72cfa276ee168155cfdfac7d a7438e0a66d6ad5f95e03e2862bd102a40399724f44ce4b2d392c120c42ca14d
T91/tt4           662aceee5e2ba8088789ce785bf6eec38f9f0d9ef45a70ac775aca7cd57038a9 e7b8d3b8f8ebff705d21a300a6664d216ae01f41694cc9c296d8b0852ea462f2
T91/tt5           96c0d40d5815f88ab28162c5204dc37fa356e223f4b923a8a28f22dbdf0d1882 4f2a6fd3d2a03336df812ff9338557b028493bffe1eb2abd67a3434195164fff
T91/tt6           708685aacebd13cd57aa28aff916a86f46584ddbdfcc81cd75fe6d4ce0d6efaf 4517d03a5470850e7c03fb598eec05964cfbe4b6b97d324eab1f6f679b8dc279
T91/tt7           c80f58bf01a7e3036903687896782ed36398fbf95e6803259ded222acf373dd3 b87517f56a1c28a214dab8fa8d7da07a15c9e928f20af58d99ddf829c9954828
T91/tt8           5c7c290dab40e61c9ff7e8779c4c95fe3211d823f776badd6ffade0a587690d6 c256d813abf68fe9d8db7506cb582e9f516be8759ea6d59e3dfb394cc041c2d5
T91/tt9           d451c3b4316519355bfff58331fe8ddc5671d78243f472731137ef4489df76e6 a21dc6dff3c87d13971158a2bad918d757400dbe62764efed6bfbb38d9db03d5
"""


def _sr_dataset(key: str, folder: str, remote: str, description: str) -> Dataset:
    """A registry entry for one SR set: each image as a BMP download or a PNG copy."""
    files = []
    for row in (r.split() for r in _SR_TABLE.strip().splitlines()):
        set_name, stem = row[0].split("/")
        if set_name != folder.split("/")[-1]:
            continue
        bmp_sha, pixels_sha = row[1], row[2]
        files.append(DataFile(
            f"{stem}.bmp", url=f"{_SRCNN_URL}{remote}{stem}.bmp", sha256=bmp_sha,
            content_sha256=pixels_sha,
            alternatives=(DataFile(f"{stem}.png", content_sha256=pixels_sha),),
        ))
    return Dataset(
        key, folder, tuple(files), description,
        homepage="https://github.com/tegg89/SRCNN-Tensorflow",
        check="per image: sha256 of the decoded RGB pixels (BMP download or PNG copy)",
    )


DATASETS: dict[str, Dataset] = {
    "cifar10": Dataset(
        "cifar10", "cifar10",
        (DataFile(
            "cifar-10-python.tar.gz", url=_CIFAR10_URL,
            sha256="6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
            alternatives=(
                # The offline copy: the same pickles rebuilt from lossless PNGs, in another
                # sample order, xz-compressed (see the offline copy's cifar10/README.md).
                DataFile("cifar-10-python.tar.xz",
                         sha256="61f45e98a7abfd1e749aedf1f17717b29dd9f221139507d17e08e7753b059b71"),
                DataFile("cifar-10-batches-py/"),  # already extracted
            ),
        ),),
        "CIFAR-10: 60,000 32x32 colour images in 10 classes (Krizhevsky, 2009). "
        "Offline copy: cifar10/cifar-10-python.tar.xz.",
        homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
        check="50,000/10,000 images of shape (3, 32, 32), 5,000/1,000 per class, and an "
              "order-independent sha256 over all (label, pixels) pairs",
    ),
    "fashion_mnist": Dataset(
        "fashion_mnist", "fashion-mnist",
        (
            # Debian recompressed the image archives: their bytes differ from the official
            # ones, so they are checked by the sha256 of the decompressed idx file. Only the
            # official md5 of those archives is published; no sha256 is typed in unverified.
            DataFile("train-images-idx3-ubyte.gz", url=_FASHION_URL + "train-images-idx3-ubyte.gz",
                     md5="8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                     content_sha256="c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
            DataFile("train-labels-idx1-ubyte.gz", url=_FASHION_URL + "train-labels-idx1-ubyte.gz",
                     sha256="a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                     md5="25c81989df183df01b3e8a0aad5dffbe",
                     content_sha256="bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
            DataFile("t10k-images-idx3-ubyte.gz", url=_FASHION_URL + "t10k-images-idx3-ubyte.gz",
                     md5="bef4ecab320f06d8554ea6380940ec79",
                     content_sha256="5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
            DataFile("t10k-labels-idx1-ubyte.gz", url=_FASHION_URL + "t10k-labels-idx1-ubyte.gz",
                     sha256="67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
                     md5="bb300cfdad3c16e7a12a480ee83cd310",
                     content_sha256="0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
        ),
        "Fashion-MNIST: 70,000 28x28 grayscale images of clothing in 10 classes "
        "(Xiao, Rasul, Vollgraf, 2017; MIT). Offline copy: fashion-mnist/*.gz.",
        homepage="https://github.com/zalandoresearch/fashion-mnist",
        check="idx headers, 60,000/10,000 images of 28x28",
        system_dirs=("/usr/share/datasets/fashion-mnist",),
    ),
    "mnist": Dataset(
        "mnist", "mnist",
        # MNIST's publishers give md5s, not sha256s (torchvision checks the same md5s), so
        # md5 is what we can verify against without inventing a checksum.
        tuple(DataFile(f"{stem}.gz", url=f"{_MNIST_URL}{stem}.gz", md5=md5) for stem, md5 in (
            ("train-images-idx3-ubyte", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
            ("train-labels-idx1-ubyte", "d53e105ee54ea40749a09fcbcd1e9432"),
            ("t10k-images-idx3-ubyte", "9fb629c4189551a2d022fa330f9573f3"),
            ("t10k-labels-idx1-ubyte", "ec29112dd5afa0611ce80d1b7f02629c"),
        )),
        "MNIST: 70,000 28x28 handwritten digits (LeCun et al., 1998). Download only: "
        "no offline copy.",
        homepage="http://yann.lecun.com/exdb/mnist/",
        check="idx headers, 60,000/10,000 images of 28x28",
    ),
    "shakespeare": Dataset(
        "shakespeare", "tinyshakespeare",
        (DataFile("input.txt", url=_SHAKESPEARE_URL,
                  sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"),),
        "Tiny Shakespeare: 1,115,394 characters of Shakespeare's plays (Karpathy, char-rnn, "
        "2015). Offline copy: tinyshakespeare/input.txt (byte-identical).",
        homepage="https://github.com/karpathy/char-rnn",
        check="sha256 of the file",
    ),
    "set5": _sr_dataset(
        "set5", "sr/Set5", "Test/Set5/",
        "Set5: 5 HR test images for super-resolution (Bevilacqua et al., BMVC 2012). "
        "Offline copy: sr/Set5/*.png."),
    "set14": _sr_dataset(
        "set14", "sr/Set14", "Test/Set14/",
        "Set14: 14 HR test images for super-resolution (Zeyde, Elad, Protter, 2010); "
        "bridge is grayscale. Offline copy: sr/Set14/*.png."),
    "t91": _sr_dataset(
        "t91", "sr/T91", "Train/",
        "T91: 91 training images for super-resolution (Yang et al., IEEE TIP 2010; used by "
        "SRCNN, FSRCNN, ESPCN). Offline copy: sr/T91/*.png."),
    "bsd100": Dataset(
        "bsd100", "sr/BSD100",
        # No checksum published and none typed in: checked by content (100 test images).
        # or the offline copy: the SR benchmark's PNGs img_001.png .. img_100.png
        (DataFile("BSDS300-images.tgz", url=_BSDS300_URL, alternatives=(DataFile("img_001.png"),)),),
        "BSD100: the 100 test images of the Berkeley Segmentation Dataset BSDS300 (Martin "
        "et al., ICCV 2001), a standard SR benchmark. Offline copy: sr/BSD100/img_*.png.",
        homepage="https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/bsds/",
        check="the archive holds exactly 100 images in BSDS300/images/test/",
    ),
}


def _dataset(name: str) -> Dataset:
    key = name.strip().lower().replace("-", "_")
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    return DATASETS[key]


# ---------------------------------------------------------------------------------------
# Checking files
# ---------------------------------------------------------------------------------------

_IMAGE_SUFFIXES = (".png", ".bmp", ".jpg", ".jpeg")


def _read_rgb(path: Path) -> np.ndarray:
    """Decode an image file to RGB uint8 ``(H, W, 3)``; grayscale is repeated 3 times."""
    from PIL import Image  # pillow comes with matplotlib

    with Image.open(path) as img:
        return np.array(img.convert("RGB"))  # a writable copy, so torch can own it


def _content_sha256(path: Path) -> str:
    """sha256 of what a file decodes to: decompressed bytes, or ``repr(shape) + pixels``."""
    if path.suffix == ".gz":
        sha = hashlib.sha256()
        with gzip.open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                sha.update(chunk)
        return sha.hexdigest()
    if path.suffix.lower() in _IMAGE_SUFFIXES:
        rgb = _read_rgb(path)
        return hashlib.sha256(repr(rgb.shape).encode() + rgb.tobytes()).hexdigest()
    raise ValueError(f"no content decoder for {path.name}")


def _file_digests(path: Path) -> tuple[str, str]:
    """(sha256, md5) of a file's bytes, in one pass."""
    sha, md5 = hashlib.sha256(), hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
            md5.update(chunk)
    return sha.hexdigest(), md5.hexdigest()


# Files already verified in this process, keyed by (path, size, mtime, identity): hashing
# CIFAR-10's 140 MB archive once per process is cheap, twice is waste.
_VERIFIED: set[tuple] = set()


def _verify(path: Path, f: DataFile, ds: Dataset, *, downloaded_from: str | None = None) -> None:
    """Raise :class:`ChecksumError` unless ``path`` matches one of ``f``'s identities."""
    if path.is_dir() or not f.has_checksum:
        return  # checked by the loader (an extracted folder, BSD100)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, f)
    if key in _VERIFIED:
        return
    expected, got = [], []
    ok = False
    if f.sha256 or f.md5:
        sha, md5 = _file_digests(path)
        ok = sha == f.sha256 or md5 == f.md5
        expected += [f"sha256 {f.sha256}"] * bool(f.sha256) + [f"md5 {f.md5}"] * bool(f.md5)
        got += [f"sha256 {sha}"] + [f"md5 {md5}"] * bool(f.md5)
    if not ok and f.content_sha256:
        try:
            content = _content_sha256(path)
        except Exception as err:  # truncated gzip, undecodable image, ...
            content = f"<cannot decode: {err}>"
        ok = content == f.content_sha256
        expected.append(f"decoded-content sha256 {f.content_sha256}")
        got.append(f"decoded-content sha256 {content}")
    if ok:
        _VERIFIED.add(key)
        return
    if downloaded_from is not None:
        where = f"downloaded from {downloaded_from}; the download was deleted. Try again"
    else:
        where = (f"local copy at {path}; it is corrupt, truncated or a different version. "
                 "Delete or replace it (a good copy, or remove it so it is downloaded again)")
    raise ChecksumError(
        f"checksum mismatch for {ds.name} file {f.path!r} ({where}).\n"
        f"  expected: {' or '.join(expected)}\n"
        f"  actual:   {', '.join(got)}"
    )


def _find(f: DataFile, folder: Path) -> tuple[Path, DataFile] | None:
    """The first form of ``f`` (itself, then its alternatives) present in ``folder``."""
    for form in (f, *f.alternatives):
        p = folder / form.path
        if p.is_dir() if form.path.endswith("/") else p.is_file():
            return p, form
    return None


# ---------------------------------------------------------------------------------------
# fetch: find or download
# ---------------------------------------------------------------------------------------

def fetch(name: str, *, quiet: bool = False) -> Path:
    """Return the folder holding dataset ``name``'s files, downloading what is missing.

    Looks in :func:`search_paths` first and uses the first folder that has every file
    (in any accepted form), after verifying them. Otherwise downloads each missing file
    from its registry URL (read at call time) into a temporary file, verifies it and
    renames it into ``data_root()/<folder>`` (or the cache, when ``data_root()`` is
    read-only). Names are case-insensitive; ``-`` and ``_`` are the same.

    Raises:
        ValueError: unknown dataset name (the message lists the known ones).
        ChecksumError: a local or downloaded file does not match its checksum; a bad
            download is deleted, never used.
        DatasetNotFoundError: not on disk and the download failed.
    """
    ds = _dataset(name)
    looked = search_paths(ds.name)
    for folder in looked:
        found = [_find(f, folder) for f in ds.files]
        if all(found):
            for path, form in found:
                _verify(path, form, ds)
            return folder

    dest = _download_root() / ds.folder
    for f in ds.files:
        if (hit := _find(f, dest)) is not None:
            _verify(*hit, ds)
            continue
        try:
            if f.url is None:
                raise OSError("no download URL is known for this file")
            _download(f.url, dest / f.path, f, ds, quiet=quiet)
        except ChecksumError:
            raise
        except (OSError, http.client.HTTPException, ValueError) as err:
            _prune_empty(dest, stop=dest.parents[len(Path(ds.folder).parts) - 1])
            places = "\n".join(f"  - {p}" for p in looked)
            raise DatasetNotFoundError(
                f"dataset {ds.name!r} ({ds.description}) was not found.\n"
                f"Looked in:\n{places}\n"
                f"Download of {f.url} failed: {type(err).__name__}: {err}\n"
                f"Fix: download it (on a machine with network: "
                f"python -c \"import minilib as ml; ml.data.fetch('{ds.name}')\"), "
                f"or set BOOK_DATA=/path/to/folder containing {ds.expected_paths()}"
            ) from err
    return dest


def _prune_empty(folder: Path, stop: Path) -> None:
    """Remove ``folder`` and its parents up to (not including) ``stop`` while they are empty."""
    while folder != stop:
        try:
            folder.rmdir()  # fails unless empty
        except OSError:
            return
        folder = folder.parent


def _download(url: str, target: Path, f: DataFile, ds: Dataset, *, quiet: bool) -> None:
    """Download ``url`` to ``target`` via a temp file: verify, then rename atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        request = urllib.request.Request(url, headers={"User-Agent": f"minilib ({APP})"})
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=60) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                      desc=f"{ds.name}: {target.name}", disable=quiet) as bar:
                while chunk := resp.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
        _verify(tmp, f, ds, downloaded_from=url)
        os.replace(tmp, target)  # atomic: a reader sees no file or the whole, verified file
    finally:
        tmp.unlink(missing_ok=True)


def _extract(archive: Path, out: Path, prefix: str,
             check: Callable[[Path], None] | None = None) -> Path:
    """Extract the regular files under ``prefix`` in a tar archive into ``out``, once.

    Safe: member names that are absolute or contain ``..`` are refused, and links,
    devices and the like are skipped, so nothing can land outside ``out``. Files go to a
    temporary folder, ``check`` (if given) runs on it, then it is renamed to ``out``
    with a marker recording which archive (path, size, mtime) it came from; a later call
    with the same archive returns at once.
    """
    st = archive.stat()
    stamp = f"{archive.resolve()}\n{st.st_size}\n{st.st_mtime_ns}\n"
    marker = out / ".complete"
    if marker.is_file() and marker.read_text() == stamp:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    tmp.chmod(0o755)  # mkdtemp makes it private; the extracted data is not secret
    try:
        with tarfile.open(archive, "r:*") as tar:  # gzip, xz or bz2
            for member in tar:
                name = PurePosixPath(member.name)
                if name.is_absolute() or ".." in name.parts:
                    raise ChecksumError(f"{archive}: unsafe member path {member.name!r}; "
                                        "refusing to extract it")
                rel = str(name)  # normalized: "./a//b" -> "a/b"
                if not member.isfile() or not rel.startswith(prefix):
                    continue
                target = tmp / rel[len(prefix):]
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        if check is not None:
            check(tmp)
        (tmp / ".complete").write_text(stamp)
        if marker.is_file() and marker.read_text() == stamp:
            return out  # another process finished first: keep its copy
        if out.exists():
            shutil.rmtree(out)  # a stale extraction of another archive
        try:
            os.rename(tmp, out)
        except OSError:
            if not (marker.is_file() and marker.read_text() == stamp):
                raise
            # another process renamed its identical copy in between: use that one
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # no-op after the rename
    return out


def _stamp(path: Path) -> tuple[str, int, int]:
    """A key for in-process caches: changes when the file (or folder) changes."""
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns


# ---------------------------------------------------------------------------------------
# CIFAR-10
# ---------------------------------------------------------------------------------------

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
# Per-channel mean and std of the training pixels on the 0..1 scale (measured; equal to the
# published values to 8 decimals). Normalize with (x / 255 - mean) / std.
CIFAR10_MEAN: tuple[float, float, float] = (0.49139968, 0.48215841, 0.44653091)
CIFAR10_STD: tuple[float, float, float] = (0.24703223, 0.24348513, 0.26158784)

# sha256 over the sorted per-image sha256(label byte + 3072 pixel bytes), per split.
# Sorting makes it independent of sample order, so it holds both for the official archive
# and for the offline copy, whose pickles hold the same images in another order.
_CIFAR10_CONTENT = {
    "train": (50_000, "55a61f79a40ece2ceda9fb5f9f7078f6ea2fc4952489cef56682bcf92cfcc260"),
    "test": (10_000, "325704b01eb92e1e2a6215ae6a916bb7db7de054af0c496be1c7be2e0fcfbf5f"),
}
_CIFAR10_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickle CIFAR-10 batches, allowing only what they contain: numpy arrays.

    Plain ``pickle.load`` runs any code a file names; this one refuses everything but
    the three numpy functions an array needs.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR-10 batch")
        return super().find_class(module, name)


def _read_cifar10_split(batches: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 ``(N, 3, 32, 32)`` and int64 ``(N,)`` from the pickles, with cheap checks."""
    xs, ys = [], []
    for name in _CIFAR10_BATCHES[split]:
        with open(batches / name, "rb") as f:
            d = _ArrayUnpickler(f, encoding="bytes").load()
        xs.append(np.asarray(d[b"data"], dtype=np.uint8))
        ys.append(np.asarray(d[b"labels"], dtype=np.int64))
    # A row is 1024 red, 1024 green, 1024 blue values, each 32x32 row-major: (3, 32, 32).
    x = np.concatenate(xs).reshape(-1, 3, 32, 32)
    y = np.concatenate(ys)
    n = _CIFAR10_CONTENT[split][0]
    counts = np.bincount(y, minlength=10)
    if len(x) != n or len(y) != n or len(counts) != 10 or (counts != n // 10).any():
        raise ChecksumError(
            f"CIFAR-10 {split} split in {batches} has {len(x)} images, {len(y)} labels, "
            f"per-class counts {counts.tolist()}; expected {n} with {n // 10} per class. "
            f"Delete {batches} (it is re-extracted) or replace the archive."
        )
    return x, y


def _cifar10_content_sha256(x: np.ndarray, y: np.ndarray) -> str:
    digests = sorted(hashlib.sha256(bytes([int(label)]) + img.tobytes()).digest()
                     for img, label in zip(x, y))
    return hashlib.sha256(b"".join(digests)).hexdigest()


def _check_cifar10(batches: Path) -> None:
    """Counts, class balance and the order-independent content hash of both splits."""
    for split, (_, expected) in _CIFAR10_CONTENT.items():
        actual = _cifar10_content_sha256(*_read_cifar10_split(batches, split))
        if actual != expected:
            raise ChecksumError(
                f"CIFAR-10 {split} images in {batches} differ from the official ones.\n"
                f"  expected: content sha256 {expected}\n  actual:   content sha256 {actual}"
            )


@functools.lru_cache(maxsize=None)
def _checked_folder(stamp: tuple[str, int, int]) -> None:
    """Check an already-extracted ``cifar-10-batches-py/`` once per process."""
    _check_cifar10(Path(stamp[0]))


def _cifar10_batches(quiet: bool = False) -> Path:
    """The folder of verified CIFAR-10 pickles, extracting the archive once if needed."""
    folder = fetch("cifar10", quiet=quiet)
    path, _ = _find(DATASETS["cifar10"].files[0], folder)
    if path.is_dir():
        _checked_folder(_stamp(path))
        return path
    out = cache_dir() / "cifar10" / "cifar-10-batches-py"
    return _extract(path, out, "cifar-10-batches-py/", check=_check_cifar10)


@functools.lru_cache(maxsize=4)
def _cifar10_tensors(stamp: tuple[str, int, int], split: str) -> tuple[Tensor, Tensor]:
    x, y = _read_cifar10_split(Path(stamp[0]), split)
    return torch.from_numpy(x), torch.from_numpy(y)


def cifar10(train: bool = True) -> tuple[Tensor, Tensor]:
    """CIFAR-10 as tensors: images uint8 ``(N, 3, 32, 32)``, labels int64 ``(N,)``.

    ``N`` is 50,000 (``train=True``) or 10,000. Classes: :data:`CIFAR10_CLASSES`.
    Looks for the official ``cifar-10-python.tar.gz``, the offline ``.tar.xz`` or an
    extracted ``cifar-10-batches-py/``; extracts into :func:`cache_dir` once (the first
    time takes some seconds) after checking counts, class balance and content hash.
    The tensors are cached in-process and shared between calls: don't modify them in place.
    """
    batches = _cifar10_batches()
    return _cifar10_tensors(_stamp(batches), "train" if train else "test")


# ---------------------------------------------------------------------------------------
# Fashion-MNIST and MNIST
# ---------------------------------------------------------------------------------------

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
# Mean and std of the training pixels on the 0..1 scale, measured on the 60,000 images.
FASHION_MNIST_MEAN: tuple[float] = (0.28604060,)
FASHION_MNIST_STD: tuple[float] = (0.35302424,)
# MNIST is not available offline, so these are the widely used published values
# (PyTorch's MNIST example), not re-measured here.
MNIST_MEAN: tuple[float] = (0.1307,)
MNIST_STD: tuple[float] = (0.3081,)


def _read_idx(path: Path) -> np.ndarray:
    """Parse an idx file (``.gz`` or raw): magic ``0 0 8 ndim``, big-endian dims, uint8 data."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if zero != 0 or dtype != 0x08 or data.size != math.prod(dims):
        raise ChecksumError(f"{path} is not a valid uint8 idx file (header {raw[:4].hex()}, "
                            f"dims {dims}, {data.size} values); delete or replace it")
    return data.reshape(dims).copy()  # copy: frombuffer is read-only


@functools.lru_cache(maxsize=8)
def _idx_tensors(images: tuple, labels: tuple, n: int) -> tuple[Tensor, Tensor]:
    x = _read_idx(Path(images[0]))
    y = _read_idx(Path(labels[0])).astype(np.int64)
    if x.shape != (n, 28, 28) or y.shape != (n,):
        raise ChecksumError(f"{images[0]} / {labels[0]}: shapes {x.shape} / {y.shape}, "
                            f"expected ({n}, 28, 28) / ({n},)")
    return torch.from_numpy(x).unsqueeze(1), torch.from_numpy(y)


def _mnist_like(name: str, train: bool) -> tuple[Tensor, Tensor]:
    folder = fetch(name)
    prefix, n = ("train", 60_000) if train else ("t10k", 10_000)
    return _idx_tensors(_stamp(folder / f"{prefix}-images-idx3-ubyte.gz"),
                        _stamp(folder / f"{prefix}-labels-idx1-ubyte.gz"), n)


def fashion_mnist(train: bool = True) -> tuple[Tensor, Tensor]:
    """Fashion-MNIST: images uint8 ``(N, 1, 28, 28)``, labels int64 ``(N,)``; N = 60,000 or 10,000.

    Classes: :data:`FASHION_MNIST_CLASSES`. Cached in-process: don't modify in place.
    """
    return _mnist_like("fashion_mnist", train)


def mnist(train: bool = True) -> tuple[Tensor, Tensor]:
    """MNIST digits: images uint8 ``(N, 1, 28, 28)``, labels int64 ``(N,)``; N = 60,000 or 10,000.

    Download only (no offline copy). Cached in-process: don't modify in place.
    """
    return _mnist_like("mnist", train)


# ---------------------------------------------------------------------------------------
# Tiny Shakespeare
# ---------------------------------------------------------------------------------------

@dataclass
class CharCorpus:
    """A character-level corpus: the text, its vocabulary and the encoded train/val splits.

    ``vocab`` is the sorted list of distinct characters; a character's id is its index.
    ``train_ids`` / ``val_ids`` are the first 90% / last 10% of the encoded text (as in
    nanoGPT's shakespeare_char), LongTensors of shape ``(n,)``.
    """

    text: str = field(repr=False)
    vocab: list[str] = field(repr=False)
    stoi: dict[str, int] = field(repr=False)
    train_ids: Tensor = field(repr=False)
    val_ids: Tensor = field(repr=False)

    @classmethod
    def from_text(cls, text: str, val_fraction: float = 0.1) -> "CharCorpus":
        vocab = sorted(set(text))
        corpus = cls(text, vocab, {c: i for i, c in enumerate(vocab)},
                     torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long))
        ids = corpus.encode(text)
        n_train = int(len(ids) * (1 - val_fraction))
        corpus.train_ids, corpus.val_ids = ids[:n_train], ids[n_train:]
        return corpus

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, s: str) -> Tensor:
        """``s`` as a LongTensor ``(len(s),)`` of character ids.

        Vectorized: code points of ``s`` are looked up in the sorted code points of the
        vocabulary with ``searchsorted`` (the vocabulary is sorted, so position = id).
        """
        codes = np.frombuffer(s.encode("utf-32-le"), dtype="<u4")
        table = np.array([ord(c) for c in self.vocab], dtype=np.uint32)
        ids = np.searchsorted(table, codes)
        known = table[np.minimum(ids, len(table) - 1)] == codes
        if not known.all():
            missing = sorted({chr(c) for c in codes[~known]})
            raise ValueError(f"characters not in the vocabulary: {missing!r}")
        return torch.from_numpy(ids.astype(np.int64))

    def decode(self, ids: Tensor | Sequence[int]) -> str:
        """The text for a sequence of ids (a 1-D tensor or a list of ints)."""
        if isinstance(ids, Tensor):
            ids = ids.flatten().tolist()
        return "".join(self.vocab[i] for i in ids)

    def __repr__(self) -> str:
        return (f"CharCorpus({len(self.text):,} chars, vocab_size={self.vocab_size}, "
                f"train={len(self.train_ids):,}, val={len(self.val_ids):,})")


@functools.lru_cache(maxsize=2)
def _corpus(stamp: tuple[str, int, int]) -> CharCorpus:
    return CharCorpus.from_text(Path(stamp[0]).read_text(encoding="utf-8"))


def shakespeare() -> CharCorpus:
    """Tiny Shakespeare as a :class:`CharCorpus` (65 characters; 90% train / 10% val)."""
    return _corpus(_stamp(fetch("shakespeare") / "input.txt"))


# ---------------------------------------------------------------------------------------
# Super-resolution images
# ---------------------------------------------------------------------------------------

SR_SETS: tuple[str, ...] = ("Set5", "Set14", "T91", "BSD100")


def _bsd100_check(folder: Path) -> None:
    n = sum(p.suffix.lower() in _IMAGE_SUFFIXES for p in folder.iterdir())
    if n != 100:
        raise ChecksumError(f"BSD100: expected 100 test images in the archive, found {n}")


@functools.lru_cache(maxsize=8)
def _rgb_tensor(stamp: tuple[str, int, int]) -> Tensor:
    return torch.from_numpy(_read_rgb(Path(stamp[0]))).permute(2, 0, 1).contiguous()


def sr_images(name: str, *, keep_gray: bool = False) -> list[Tensor]:
    """The HR images of a super-resolution set, each uint8 ``(3, H, W)``, sorted by file name.

    ``name`` is one of :data:`SR_SETS` (case-insensitive): Set5, Set14, T91, BSD100 (offline
    copies exist; BSD100 downloads the BSDS300 archive elsewhere). Grayscale images
    (Set14's bridge) are repeated to 3 channels, or kept as ``(1, H, W)`` with
    ``keep_gray=True`` (as MATLAB reads them: the SR papers' scripts use such an image as
    its own Y, see ``ml.sr.hr_y``). Sizes differ between images, so this is a list.
    """
    key = name.strip().lower()
    if key not in {s.lower() for s in SR_SETS}:
        raise ValueError(f"unknown super-resolution set {name!r}; use one of {', '.join(SR_SETS)}")
    ds = DATASETS[key]
    folder = fetch(key)
    if key == "bsd100":
        archive = folder / ds.files[0].path
        if archive.is_file():
            out = _extract(archive, cache_dir() / "sr" / "BSD100", "BSDS300/images/test/",
                           check=_bsd100_check)
        else:  # the offline copy's PNGs
            out = folder
            _bsd100_check(out)
        paths = [p for p in out.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES]
    else:
        paths = [_find(f, folder)[0] for f in ds.files]
    paths = sorted(paths, key=lambda p: p.name)
    images = [_rgb_tensor(_stamp(p)) for p in paths]
    return [img[:1] if keep_gray and _is_gray(p) else img for p, img in zip(paths, images)]


def _is_gray(path: Path) -> bool:
    """Whether an image file holds one channel (grayscale), as MATLAB's ``imread`` sees it."""
    from PIL import Image

    with Image.open(path) as img:
        return img.mode in ("1", "L", "I", "I;16", "F")


# ---------------------------------------------------------------------------------------
# Augmentation on the device, vectorized over the batch
# ---------------------------------------------------------------------------------------

def _randint(high: int, size: tuple[int, ...], generator: torch.Generator | None,
             device: torch.device) -> Tensor:
    """Uniform ints in ``[0, high)`` drawn with ``generator`` on its device, then moved."""
    where = generator.device if generator is not None else device
    return torch.randint(high, size, generator=generator, device=where).to(device)


def random_crop(x: Tensor, padding: int, *, mode: str = "zeros",
                generator: torch.Generator | None = None,
                offsets: Tensor | None = None) -> Tensor:
    """Pad by ``padding`` on each side, then crop back to ``(H, W)`` at a random offset per image.

    ``x``: ``(B, C, H, W)`` float. ``mode``: ``"zeros"`` or ``"reflect"`` padding.
    ``offsets``: optional int ``(B, 2)`` of ``(dy, dx)`` in ``[0, 2 * padding]``; drawn
    uniformly when None. Offset ``(padding, padding)`` gives back the image unchanged.

    All crops happen in one gather: output pixel ``(b, c, i, j)`` reads padded pixel
    ``(b, c, dy_b + i, dx_b + j)``, with the row and column indices broadcast from
    ``(B, H)`` and ``(B, W)`` tables; no Python loop over samples.
    """
    if padding == 0:
        return x
    B, C, H, W = x.shape
    pad_mode = {"zeros": "constant", "reflect": "reflect"}[mode]
    xp = F.pad(x, (padding, padding, padding, padding), mode=pad_mode)  # (B, C, H+2p, W+2p)
    if offsets is None:
        offsets = _randint(2 * padding + 1, (B, 2), generator, x.device)
    offsets = offsets.to(x.device)
    rows = offsets[:, 0, None] + torch.arange(H, device=x.device)  # (B, H)
    cols = offsets[:, 1, None] + torch.arange(W, device=x.device)  # (B, W)
    b = torch.arange(B, device=x.device)[:, None, None, None]
    c = torch.arange(C, device=x.device)[None, :, None, None]
    return xp[b, c, rows[:, None, :, None], cols[:, None, None, :]]  # (B, C, H, W)


def random_flip(x: Tensor, *, p: float = 0.5, generator: torch.Generator | None = None) -> Tensor:
    """Mirror each image of ``x`` ``(B, C, H, W)`` left-right with probability ``p``."""
    where = generator.device if generator is not None else x.device
    flip = (torch.rand(x.shape[0], generator=generator, device=where) < p).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def cutout(x: Tensor, size: int, *, generator: torch.Generator | None = None) -> Tensor:
    """Zero a ``size`` x ``size`` square at a random centre of each image (DeVries & Taylor, 2017).

    ``x``: ``(B, C, H, W)``, normally already normalized, so zero is the mean colour.
    The centre is uniform over the image and the square is clipped at the border, as in
    the paper. The mask is built from ``(B, H)`` and ``(B, W)`` interval tests.
    """
    if size == 0:
        return x
    B, C, H, W = x.shape
    top = _randint(H, (B,), generator, x.device) - size // 2
    left = _randint(W, (B,), generator, x.device) - size // 2
    ys = torch.arange(H, device=x.device)
    xs = torch.arange(W, device=x.device)
    in_rows = (ys >= top[:, None]) & (ys < top[:, None] + size)     # (B, H)
    in_cols = (xs >= left[:, None]) & (xs < left[:, None] + size)   # (B, W)
    mask = in_rows[:, :, None] & in_cols[:, None, :]                # (B, H, W)
    return x.masked_fill(mask[:, None], 0.0)


# ---------------------------------------------------------------------------------------
# Batches that live on the device
# ---------------------------------------------------------------------------------------

class DeviceLoader:
    """Mini-batches of an image dataset that lives on the device.

    The images (uint8, so 4x smaller than float) move to ``device`` once. Each epoch
    (each ``iter(loader)``) then permutes indices on the device and, per batch, gathers
    the images, converts them to float, augments and normalizes them, all on the device::

        x = (x / 255 - mean) / std         (per channel; just x / 255 when mean is None)

    Augmentation, only when ``shuffle=True`` (training; an evaluation loader with
    ``shuffle=False`` gives the plain images): random crop after zero or reflect padding
    of ``crop_padding`` (``pad_mode``), left-right flip with p = 0.5 (``flip``), and
    ``cutout`` (a square of that side set to 0 after normalization). Crop and flip run
    on the 0..1 scale before normalization, so zero padding is black, as in torchvision.

    Float images are taken as already normalized: they are used as they are (``mean`` and
    ``std`` must then be None), and augmented the same way.

    Yields ``(x, y)``: x float32 ``(B, C, H, W)`` (channels-last memory format if
    ``channels_last``), y int64 ``(B,)``. ``len(loader)`` is the number of batches per
    epoch; the last, smaller batch is kept unless ``drop_last``. A ``generator`` makes
    the order and the augmentation reproducible; give it on ``device``
    (``torch.Generator(device)``): with a CPU generator and a GPU device, each augmented
    batch copies its random draws to the GPU, a host-device sync per batch.
    """

    def __init__(self, images: Tensor, labels: Tensor, batch_size: int, *,
                 shuffle: bool = True, drop_last: bool = False, crop_padding: int = 0,
                 flip: bool = False, cutout: int = 0, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, device: torch.device | str | None = None,
                 channels_last: bool = False, generator: torch.Generator | None = None,
                 pad_mode: str = "zeros"):
        if images.dim() != 4:
            raise ValueError(f"images must be (N, C, H, W); got shape {tuple(images.shape)}")
        if labels.shape != images.shape[:1]:
            raise ValueError(f"labels must be (N,) with N={len(images)}; got {tuple(labels.shape)}")
        if images.dtype != torch.uint8 and not images.is_floating_point():
            raise ValueError(f"images must be uint8 (0..255) or float; got {images.dtype}")
        if images.is_floating_point() and (mean is not None or std is not None):
            raise ValueError("float images are taken as already normalized: pass mean=None, "
                             "std=None, or give uint8 images to normalize on the device")
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std (per channel), or neither")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        if pad_mode not in ("zeros", "reflect"):
            raise ValueError(f"pad_mode must be 'zeros' or 'reflect'; got {pad_mode!r}")
        self.device = torch.device(device) if device is not None else default_device()
        self.images = images.to(self.device)  # moved once, kept as uint8
        self.labels = labels.to(self.device, torch.long)
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.crop_padding, self.flip, self.cutout = crop_padding, flip, cutout
        self.pad_mode, self.channels_last, self.generator = pad_mode, channels_last, generator
        self.mean = self.std = None
        if mean is not None:
            C = images.shape[1]
            if len(mean) != C or len(std) != C:
                raise ValueError(f"mean and std need {C} values (one per channel); "
                                 f"got {len(mean)} and {len(std)}")
            self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, C, 1, 1)
            self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, C, 1, 1)

    @property
    def augment(self) -> bool:
        return self.shuffle and bool(self.crop_padding or self.flip or self.cutout)

    def __len__(self) -> int:
        n = len(self.images)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n, bs = len(self.images), self.batch_size
        if self.shuffle:
            where = self.generator.device if self.generator is not None else self.device
            order = torch.randperm(n, generator=self.generator, device=where).to(self.device)
        else:
            order = torch.arange(n, device=self.device)
        for i in range(len(self)):
            idx = order[i * bs:(i + 1) * bs]
            yield self._prepare(self.images[idx]), self.labels[idx]

    def _prepare(self, x: Tensor) -> Tensor:
        """uint8 or float ``(B, C, H, W)`` -> augmented, normalized float32 ``(B, C, H, W)``."""
        x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
        g = self.generator
        if self.augment and self.crop_padding:
            x = random_crop(x, self.crop_padding, mode=self.pad_mode, generator=g)
        if self.augment and self.flip:
            x = random_flip(x, generator=g)
        if self.mean is not None:
            x = (x - self.mean) / self.std
        if self.augment and self.cutout:
            x = cutout(x, self.cutout, generator=g)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def __repr__(self) -> str:
        return (f"DeviceLoader({len(self.images)} samples {tuple(self.images.shape[1:])} "
                f"{self.images.dtype}, batch_size={self.batch_size}, {len(self)} batches, "
                f"device={self.device}, augment={self.augment})")


class TokenBatches:
    """Random windows of a token stream, on the device (nanoGPT's ``get_batch``).

    Each batch picks ``batch_size`` random starts ``s`` and returns
    ``x[b] = ids[s_b : s_b + T]`` and ``y[b] = ids[s_b + 1 : s_b + T + 1]``: the target
    is the input shifted by one token. Iterating yields ``steps`` batches; ``len()`` is
    ``steps``; :meth:`sample` gives one batch. x and y are int64 ``(B, T)``.

    A ``generator`` on the CPU makes the windows the same on every device. Iterating then
    draws the starts of all ``steps`` batches at once and copies them to the device in one
    transfer (the same numbers, in the same order, as ``steps`` calls of :meth:`sample`),
    instead of one copy per batch, each of which would wait for the GPU.
    """

    def __init__(self, ids: Tensor, block_size: int, batch_size: int, *, steps: int,
                 device: torch.device | str | None = None,
                 generator: torch.Generator | None = None):
        if ids.dim() != 1:
            raise ValueError(f"ids must be a 1-D tensor of token ids; got shape {tuple(ids.shape)}")
        if len(ids) <= block_size:
            raise ValueError(f"need more than block_size={block_size} tokens; got {len(ids)}")
        self.device = torch.device(device) if device is not None else default_device()
        self.ids = ids.to(self.device, torch.long)  # moved once
        self.block_size, self.batch_size, self.steps = block_size, batch_size, steps
        self.generator = generator
        self._window = torch.arange(block_size + 1, device=self.device)  # (T+1,)

    def sample(self) -> tuple[Tensor, Tensor]:
        """One batch ``(x, y)``, each int64 ``(B, T)``, with ``y = x`` shifted by one."""
        starts = _randint(len(self.ids) - self.block_size, (self.batch_size,),
                          self.generator, self.device)
        # One gather for the whole batch: (B, 1) + (T+1,) -> (B, T+1) indices;
        # contiguous: losses call .view(-1) on the targets.
        return self._windows(starts)

    def _windows(self, starts: Tensor) -> tuple[Tensor, Tensor]:
        window = self.ids[starts[:, None] + self._window]        # (B, T+1)
        return window[:, :-1].contiguous(), window[:, 1:].contiguous()

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        g = self.generator
        if g is not None and g.device.type != self.device.type:  # host draws, device windows
            starts = _randint(len(self.ids) - self.block_size, (self.steps, self.batch_size),
                              g, self.device)                     # one copy per epoch
            for s in starts:
                yield self._windows(s)
            return
        for _ in range(self.steps):
            yield self.sample()


def subset(images: Tensor, labels: Tensor, n: int, *, seed: int = 0,
           stratified: bool = True) -> tuple[Tensor, Tensor]:
    """``n`` samples of ``(images, labels)``, with balanced classes when ``stratified``.

    Stratified: each of the K classes gets ``n // K`` samples (the first ``n % K`` classes
    one more), drawn at random with ``seed``. The result keeps the original order.
    Smoke and cpu scales use it to shrink a dataset without skewing its classes.
    """
    N = len(labels)
    if not 0 < n <= N:
        raise ValueError(f"n must be in 1..{N} (the dataset size); got {n}")
    g = torch.Generator().manual_seed(seed)
    labels_cpu = labels.cpu()
    if not stratified:
        idx = torch.randperm(N, generator=g)[:n]
    else:
        classes = labels_cpu.unique()
        K = len(classes)
        picks = []
        for k, c in enumerate(classes.tolist()):
            members = (labels_cpu == c).nonzero().flatten()
            want = n // K + (k < n % K)
            if want > len(members):
                raise ValueError(f"class {c} has {len(members)} samples; a stratified subset "
                                 f"of {n} needs {want}. Use a smaller n or stratified=False")
            picks.append(members[torch.randperm(len(members), generator=g)[:want]])
        idx = torch.cat(picks)
    idx = idx.sort().values.to(labels.device)
    return images[idx.to(images.device)], labels[idx]
