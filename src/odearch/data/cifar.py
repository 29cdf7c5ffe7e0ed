"""CIFAR-10 / CIFAR-100 from the official python-format pickles, read without executing code.

The official archives (https://www.cs.toronto.edu/~kriz/cifar.html) hold pickled dicts (``encoding="bytes"``) whose
``b'data'`` is an (n, 3072) uint8 array: each row is the R plane, then G, then B, 32 x 32 each, so a plain reshape
gives CHW images. ``load_cifar`` returns the whole split as tensors; augmentation lives in ``loader.py``.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..datastats import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD
from .names import canonical_name

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# Fine labels in the order of `cifar-100-python/meta` (alphabetical).
CIFAR100_CLASSES = (
    "apple",
    "aquarium_fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "butterfly",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "chair",
    "chimpanzee",
    "clock",
    "cloud",
    "cockroach",
    "couch",
    "crab",
    "crocodile",
    "cup",
    "dinosaur",
    "dolphin",
    "elephant",
    "flatfish",
    "forest",
    "fox",
    "girl",
    "hamster",
    "house",
    "kangaroo",
    "keyboard",
    "lamp",
    "lawn_mower",
    "leopard",
    "lion",
    "lizard",
    "lobster",
    "man",
    "maple_tree",
    "motorcycle",
    "mountain",
    "mouse",
    "mushroom",
    "oak_tree",
    "orange",
    "orchid",
    "otter",
    "palm_tree",
    "pear",
    "pickup_truck",
    "pine_tree",
    "plain",
    "plate",
    "poppy",
    "porcupine",
    "possum",
    "rabbit",
    "raccoon",
    "ray",
    "road",
    "rocket",
    "rose",
    "sea",
    "seal",
    "shark",
    "shrew",
    "skunk",
    "skyscraper",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "streetcar",
    "sunflower",
    "sweet_pepper",
    "table",
    "tank",
    "telephone",
    "television",
    "tiger",
    "tractor",
    "train",
    "trout",
    "tulip",
    "turtle",
    "wardrobe",
    "whale",
    "willow_tree",
    "wolf",
    "woman",
    "worm",
)


@dataclass(frozen=True)
class _Spec:
    name: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: bytes
    num_classes: int
    url: str
    md5: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    classes: tuple[str, ...]

    @property
    def archive(self) -> str:
        return self.url.rsplit("/", 1)[1]


_SPECS = {
    "cifar10": _Spec(
        "CIFAR-10",
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        b"labels",
        10,
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a",
        CIFAR10_MEAN,
        CIFAR10_STD,
        CIFAR10_CLASSES,
    ),
    "cifar100": _Spec(
        "CIFAR-100",
        "cifar-100-python",
        ("train",),
        ("test",),
        b"fine_labels",
        100,
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "eb9058c3a382ffc7106e4002c42a8d85",
        CIFAR100_MEAN,
        CIFAR100_STD,
        CIFAR100_CLASSES,
    ),
}
_FULL_SIZE = {True: 50000, False: 10000}


def _spec(dataset: str) -> _Spec:
    key = canonical_name(dataset)
    if key not in _SPECS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(_SPECS)}")
    return _SPECS[key]


def dataset_info(dataset: str) -> dict[str, Any]:
    """Describes a dataset for model and loader construction.

    Args:
        dataset: "cifar10" or "cifar100" (case and "-"/"_" ignored).

    Returns:
        dict with ``num_classes``, per-channel ``mean`` and ``std`` of the training set (pixels in [0, 1]) and the
        class names ``classes`` in label order.
    """
    s = _spec(dataset)
    return {"num_classes": s.num_classes, "mean": s.mean, "std": s.std, "classes": s.classes}


# --------------------------------------------------------------------------------------------------------- pickles
class ForbiddenGlobalError(pickle.UnpicklingError):
    """A pickle asked for a global outside the numpy-array allow-list (it could run arbitrary code)."""


def _allowed_globals() -> dict[tuple[str, str], Any]:
    try:  # numpy >= 2 moved the module; pickles written by either version name their own path
        from numpy._core import multiarray
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray
    return {
        ("numpy.core.multiarray", "_reconstruct"): multiarray._reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): multiarray._reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that only resolves the globals numpy arrays need; builtin containers need no lookup at all."""

    _ALLOWED = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise ForbiddenGlobalError(
                f"refusing to unpickle global {module}.{name}: CIFAR files may only reconstruct numpy arrays"
            ) from None


def _read_pickle(path: Path) -> Any:
    """Unpickles ``path`` with ``RestrictedUnpickler``; a corrupt or truncated file becomes a one-line ValueError."""
    with open(path, "rb") as f:
        try:
            return RestrictedUnpickler(f, encoding="bytes").load()
        except ForbiddenGlobalError as e:  # name the file: the message says what was refused
            raise ForbiddenGlobalError(
                f"{path}: {e}; the file is not an official CIFAR batch (delete it and download again)"
            ) from None
        except Exception as e:  # EOFError, UnpicklingError, numpy errors ... all mean "this file is damaged"
            raise ValueError(f"{path}: not a valid CIFAR file (truncated or corrupt): {type(e).__name__}: {e}") from e


def _read_batch(path: Path, spec: _Spec) -> tuple[np.ndarray, np.ndarray]:
    """Reads one batch file as (n, 3, 32, 32) uint8 images and (n,) int64 labels, checking its structure."""
    d = _read_pickle(path)
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(d).__name__}")
    d = {k.encode() if isinstance(k, str) else k: v for k, v in d.items()}
    if b"data" not in d or spec.label_key not in d:
        raise ValueError(f"{path}: missing key b'data' or {spec.label_key!r} (keys: {sorted(d)})")
    data, labels = d[b"data"], np.asarray(d[spec.label_key])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise ValueError(f"{path}: b'data' must be a uint8 array of shape (n, 3072), got {type(data).__name__} {shape}")
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: {len(data)} images but labels of shape {labels.shape} and dtype {labels.dtype}")
    if len(labels) and (labels.min() < 0 or labels.max() >= spec.num_classes):
        raise ValueError(f"{path}: labels outside [0, {spec.num_classes}): min {labels.min()}, max {labels.max()}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


# --------------------------------------------------------------------------------------------------------- download
def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _safe_extract(archive: Path, parent: Path, folder: str) -> None:
    """Extracts ``folder/`` from ``archive`` into ``parent`` via a temporary directory, refusing unsafe members."""
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=parent))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            for m in members:
                if m.name.startswith(("/", "\\")) or ".." in Path(m.name).parts or not (m.isfile() or m.isdir()):
                    raise ValueError(f"{archive}: refusing unsafe archive member {m.name!r}")
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmp, members=members, filter="data")
            else:  # pragma: no cover - Python without PEP 706; members were vetted above
                tar.extractall(tmp, members=members)
        src = tmp / folder
        if not src.is_dir():
            raise ValueError(f"{archive}: archive has no {folder}/ folder")
        dst = parent / folder
        dst.mkdir(exist_ok=True)
        for f in src.iterdir():  # move file by file so an existing, partly filled folder is completed, not replaced
            if not (dst / f.name).exists():
                os.replace(f, dst / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _download(spec: _Spec, parent: Path) -> None:
    """Fetches and md5-checks the official archive into ``parent`` (temp file, then rename), then extracts it."""
    archive = parent / spec.archive
    if not (archive.is_file() and _md5(archive) == spec.md5):
        fd, tmp = tempfile.mkstemp(prefix=f".{spec.archive}.", suffix=".part", dir=parent)
        try:
            h = hashlib.md5(usedforsecurity=False)
            with os.fdopen(fd, "wb") as f, urllib.request.urlopen(spec.url, timeout=60) as r:
                while chunk := r.read(1 << 20):
                    h.update(chunk)
                    f.write(chunk)
            if h.hexdigest() != spec.md5:
                raise ValueError(f"md5 mismatch for {spec.url}: got {h.hexdigest()}, expected {spec.md5}")
            os.replace(tmp, archive)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    _safe_extract(archive, parent, spec.folder)


# --------------------------------------------------------------------------------------------------------- loading
def _resolve_root(root: str | Path | None, spec: _Spec) -> tuple[Path, Path]:
    """Returns (parent, folder): the directory holding the dataset folder, and the folder itself."""
    if root is None:
        root = os.environ.get("ODEARCH_DATA") or "data"
    root = Path(root).expanduser().absolute()
    if root.name == spec.folder:
        return root.parent, root
    return root, root / spec.folder


def load_cifar(
    root: str | Path | None,
    dataset: str = "cifar10",
    train: bool = True,
    download: bool = True,
    *,
    check_size: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loads a whole CIFAR split from the official python-format files.

    Args:
        root: directory containing ``cifar-10-batches-py/`` (or ``cifar-100-python/``), or that folder. None means
            the ``ODEARCH_DATA`` environment variable, else ``./data``.
        dataset: "cifar10" or "cifar100" (CIFAR-100 uses the 100 fine labels).
        train: the 50000-image training split if True, else the 10000-image test split.
        download: fetch the official archive into ``root`` when files are missing (md5-checked, safely extracted).
        check_size: require the official row count (50000 / 10000) and every class to occur; turn off only for
            deliberately small copies (e.g. synthetic test folders).

    Returns:
        images: uint8 tensor (N, 3, 32, 32), CHW, in file order; labels: int64 tensor (N,).

    Raises:
        FileNotFoundError: files are missing and could not be downloaded (the message says where to put them).
        ValueError: a file is truncated or malformed, or the split has the wrong size.
        pickle.UnpicklingError: a file references a global outside the numpy allow-list (``ForbiddenGlobalError``).
    """
    spec = _spec(dataset)
    parent, folder = _resolve_root(root, spec)
    files = spec.train_files if train else spec.test_files
    _ensure_files(spec, parent, folder, files, download)
    parts = [_read_batch(folder / f, spec) for f in files]
    images = torch.from_numpy(np.ascontiguousarray(np.concatenate([p[0] for p in parts])))
    labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    if check_size:
        _check_split(labels, spec, folder, train)
    return images, labels


def _ensure_files(spec: _Spec, parent: Path, folder: Path, files: tuple[str, ...], download: bool) -> None:
    """Download the official archive into ``parent`` when one of ``files`` is missing from ``folder`` (and
    ``download``); raise ``FileNotFoundError`` naming where to put them when they are still missing."""
    missing = [f for f in files if not (folder / f).is_file()]
    if not missing:
        return
    why = "download=False"
    if download:
        created = not parent.exists()
        try:
            parent.mkdir(parents=True, exist_ok=True)
            _download(spec, parent)
        except (OSError, ValueError, tarfile.TarError) as e:
            if created:  # leave no trace of a failed attempt
                shutil.rmtree(parent, ignore_errors=True)
            why = f"download failed: {type(e).__name__}: {e}".replace("\n", " ")
        missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{spec.name} files missing: {', '.join(missing)} in {folder}. Put the extracted {spec.folder}/ "
            f"folder in {parent} (or set ODEARCH_DATA), or get it from {spec.url} ({why})"
        )


def _check_split(labels: torch.Tensor, spec: _Spec, folder: Path, train: bool) -> None:
    """Raise ``ValueError`` unless the split has the official row count and every class occurs."""
    expected = _FULL_SIZE[train]
    if len(labels) != expected:
        raise ValueError(
            f"{spec.name} {'train' if train else 'test'} split in {folder} has {len(labels)} "
            f"images, expected {expected} (truncated copy?)"
        )
    absent = (torch.bincount(labels, minlength=spec.num_classes) == 0).nonzero().flatten().tolist()
    if absent:
        raise ValueError(f"{spec.name} split in {folder} has no images of classes {absent}")


# --------------------------------------------------------------------------------------------------------- subsets
def train_val_split(
    images: torch.Tensor, labels: torch.Tensor, val_size: int = 5000, seed: int = 0
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Splits a set into train and validation parts by a seeded random choice of ``val_size`` images.

    The choice depends only on (N, val_size, seed); both parts keep the original relative order.

    Args:
        images: (N, ...) tensor.
        labels: (N,) tensor.
        val_size: number of validation images, 1 <= val_size < N (5000 gives the usual 45k / 5k CIFAR split).
        seed: seed of the CPU generator that picks the validation images.

    Returns:
        ((train_images, train_labels), (val_images, val_labels)).
    """
    n = len(images)
    if len(labels) != n:
        raise ValueError(f"images ({n}) and labels ({len(labels)}) differ in length")
    if not 1 <= val_size < n:
        raise ValueError(f"val_size must be in [1, {n - 1}] for {n} images, got {val_size}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = perm[:val_size].sort().values, perm[val_size:].sort().values
    return (images[train_idx], labels[train_idx]), (images[val_idx], labels[val_idx])


def take_first(images: torch.Tensor, labels: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns the first ``n`` images and labels (the ``subset`` option), requiring 1 <= n <= N."""
    if len(labels) != len(images):
        raise ValueError(f"images ({len(images)}) and labels ({len(labels)}) differ in length")
    if not 1 <= n <= len(images):
        raise ValueError(f"subset size must be in [1, {len(images)}], got {n}")
    return images[:n], labels[:n]
