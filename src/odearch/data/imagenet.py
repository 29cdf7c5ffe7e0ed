"""ImageNet (ILSVRC-2012) in torchvision's ``ImageFolder`` layout, with the standard ResNet recipe's augmentation.

Layout: ``root/train/<wnid>/*.JPEG`` and ``root/val/<wnid>/*.JPEG`` (the validation images sorted into class
folders, as torchvision's ``ImageFolder`` and the PyTorch ImageNet example expect).

Augmentation (He et al. 2015 / Goyal et al. 2017, torchvision's reference recipe; the paper reports "scale
augmentation, 224 crops" (?)): training RandomResizedCrop(224, scale (0.08, 1), ratio (3/4, 4/3)) + horizontal flip;
evaluation Resize(256) of the shorter side + CenterCrop(224) (single-crop error); both normalised with the ImageNet
mean / std. :func:`make_imagenet_loader` returns an :class:`ImageNetLoader`: DataLoader workers, pinned memory,
persistent workers, a ``DistributedSampler`` when ``world_size > 1`` (training; evaluation shards without padding,
so that every image counts once), ``set_epoch`` as on ``CifarLoader``, and ``iter_from(b)``, which resumes an epoch
at batch b without reading or decoding the b batches before it.

Reproducibility: the order of epoch e is a pure function of (seed, e), and a global batch holds the same images for
any number of ranks (rank r of R takes positions r, r + R, ... of the epoch's permutation). The random crops and
flips are drawn from the torch RNG of whichever process runs the transform: the main process with ``workers=0``
(captured in training checkpoints, so a resumed run repeats the uninterrupted one), else the DataLoader workers,
whose seeds depend on how many epochs the process has iterated: with workers a resumed run draws other crops.

Decoding: ``decode="pil"`` (default) decodes and augments in the DataLoader workers with PIL. ``decode="device"``
has the workers read the raw file bytes only; the main process decodes each batch with
``torchvision.io.decode_jpeg(..., device=device)`` (nvJPEG on a GPU: the CPU decode is usually the ImageNet
bottleneck) and crops, flips and normalises there. Without CUDA ``device="cuda"`` falls back to the CPU with a
warning, so the same code runs (slower: decoding then happens in the main process) on a CPU-only machine such as CI;
files that are not baseline JPEGs (ImageNet has one PNG and some CMYK JPEGs) are decoded one by one on the CPU.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler, SequentialSampler, Subset
from torchvision.datasets import ImageFolder

from ..datastats import IMAGENET_MEAN, IMAGENET_STD

# The training recipe (configs/imagenet/*.yaml): SGD, momentum 0.9, no Nesterov, weight decay 1e-4, lr 0.1 per 256
# images (linear scaling: lr = 0.1 * batch_size / 256, Goyal et al. 2017), 90 epochs, lr / 10 at epochs 30, 60 and 80.
# He et al. (2015)'s step schedule, which the paper follows (?): PAPER.md's ImageNet recipe line is unconfirmed.
IMAGENET_RECIPE: dict[str, Any] = {
    "epochs": 90,
    "batch_size": 256,
    "lr": 0.1,
    "momentum": 0.9,
    "nesterov": False,
    "weight_decay": 1e-4,
    "schedule": "step",
    "milestones": (30, 60, 80),
    "gamma": 0.1,
}
NUM_CLASSES = 1000

CROP_SCALE = (0.08, 1.0)  # RandomResizedCrop area range (Szegedy et al. 2015, the torchvision recipe)
CROP_RATIO = (3 / 4, 4 / 3)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_RECIPE",
    "IMAGENET_STD",
    "NUM_CLASSES",
    "ImageNetLoader",
    "eval_transform",
    "imagenet_folder",
    "make_imagenet_loader",
    "make_synthetic_imagefolder",
    "train_transform",
]


# ------------------------------------------------------------------------------------------------------ transforms
def train_transform(crop: int = 224) -> T.Compose:
    """RandomResizedCrop(crop) + horizontal flip + ToTensor + ImageNet normalisation (PIL image -> (3, crop, crop))."""
    return T.Compose(
        [
            T.RandomResizedCrop(crop, scale=CROP_SCALE, ratio=CROP_RATIO),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def eval_transform(crop: int = 224, resize: int = 256) -> T.Compose:
    """Resize(resize) of the shorter side + CenterCrop(crop) + ToTensor + normalisation: the single-crop test."""
    return T.Compose([T.Resize(resize), T.CenterCrop(crop), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


# -------------------------------------------------------------------------------------------------------- datasets
def _split_dir(root: str | Path, split: str) -> Path:
    folder = Path(root).expanduser() / split
    if not folder.is_dir():
        raise FileNotFoundError(
            f"ImageNet {split}/ not found: expected the ImageFolder layout {folder}/<class>/<image>"
        )
    return folder


def imagenet_folder(root: str | Path, split: str, transform: Any = None) -> ImageFolder:
    """``ImageFolder`` over ``root/split``; a missing folder raises ``FileNotFoundError`` naming the layout."""
    return ImageFolder(str(_split_dir(root, split)), transform=transform)


def _read_bytes(path: str) -> torch.Tensor:
    """The encoded file as a 1-D uint8 tensor (decoded later, on the device)."""
    return torch.from_numpy(np.fromfile(path, dtype=np.uint8))


def _collate_encoded(batch: list[tuple[torch.Tensor, int]]) -> tuple[list[torch.Tensor], torch.Tensor]:
    return [data for data, _ in batch], torch.tensor([label for _, label in batch], dtype=torch.int64)


class _ShardSampler(Sampler[int]):
    """Evaluation shard of rank r among R: positions r, r + R, r + 2R, ... in order, without padding.

    Every image is counted exactly once over the ranks (``DistributedSampler`` would repeat images to even the
    shards out); the shards differ by at most one image, which is harmless since evaluation needs no collective per
    batch.
    """

    def __init__(self, n: int, rank: int, world_size: int) -> None:
        self.n, self.rank, self.world_size = n, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))


class _SkippableSampler(Sampler[int]):
    """Wraps a sampler; the next iteration (only) starts ``skip`` indices in. ``len`` stays the full epoch's.

    The DataLoader draws the indices in the main process and hands them to the workers, so skipped images are never
    read nor decoded.
    """

    def __init__(self, inner: Sampler[int]) -> None:
        self.inner, self.skip = inner, 0

    def __iter__(self) -> Iterator[int]:
        skip, self.skip = self.skip, 0
        return itertools.islice(iter(self.inner), skip, None)

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------- loader
class ImageNetLoader:
    """Iterates (images, labels) of one split: images (b, 3, crop, crop) float normalised, labels (b,) int64.

    Built by :func:`make_imagenet_loader`. ``batch_size`` is GLOBAL as on ``CifarLoader``: each of ``world_size``
    ranks yields ``batch_size // world_size`` images per step. Call ``set_epoch(e)`` before epoch e (it reseeds the
    shuffle, ``DistributedSampler`` or not). Attributes: ``dataset`` (the ImageFolder), ``sampler``, ``loader`` (the
    DataLoader), ``classes``, ``num_classes``, ``num_images`` (images of the split in use, over all ranks).
    """

    def __init__(
        self,
        dataset: ImageFolder,
        loader: DataLoader,
        sampler: Sampler,
        *,
        train: bool,
        augment: bool,
        seed: int,
        decode: str,
        device: torch.device | None,
        crop: int,
        resize: int,
        channels_last: bool,
    ) -> None:
        self.dataset, self.loader, self.sampler = dataset, loader, sampler
        self.train, self.augment, self.seed, self.decode, self.device = train, augment, seed, decode, device
        self.num_images = len(loader.dataset)  # type: ignore[arg-type]
        self.crop, self.resize, self.channels_last = crop, resize, channels_last
        self.classes: list[str] = list(dataset.classes)
        self.num_classes = len(self.classes)
        self.epoch = 0
        if self.decode == "device":
            dev = device or torch.device("cpu")
            self._mean = torch.tensor(IMAGENET_MEAN, device=dev).view(3, 1, 1) * 255
            self._std = torch.tensor(IMAGENET_STD, device=dev).view(3, 1, 1) * 255

    def set_epoch(self, epoch: int) -> None:
        """Selects the shuffle of epoch ``epoch`` (seed + epoch on every rank); not advanced automatically."""
        if epoch < 0:
            raise ValueError(f"epoch must be non-negative, got {epoch}")
        self.epoch = epoch
        if isinstance(self.sampler, DistributedSampler):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return len(self.loader)

    def iter_from(self, start_batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of the current epoch from batch ``start_batch`` on; the ones before are never loaded."""
        if start_batch < 0:
            raise ValueError(f"start_batch must be non-negative, got {start_batch}")
        sampler = self.loader.sampler
        if isinstance(sampler, _SkippableSampler):
            sampler.skip = start_batch * self.loader.batch_size  # type: ignore[operator]
            return iter(self)
        return itertools.islice(iter(self), start_batch, None)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if isinstance(self.sampler, RandomSampler) and self.sampler.generator is not None:
            self.sampler.generator.manual_seed(self.seed + self.epoch)  # iterating twice repeats the epoch
        for data, labels in self.loader:
            if self.decode == "device":
                x = self._decode_batch(data)
                labels = labels.to(x.device, non_blocking=True)
            else:
                x = data if self.device is None else data.to(self.device, non_blocking=True)
                labels = labels if self.device is None else labels.to(self.device, non_blocking=True)
            yield (x.contiguous(memory_format=torch.channels_last) if self.channels_last else x), labels

    # ----------------------------------------------------------------------------------------- on-device decoding
    def _decode_batch(self, data: list[torch.Tensor]) -> torch.Tensor:
        from torchvision.io import ImageReadMode, decode_image, decode_jpeg

        dev = self.device or torch.device("cpu")
        with warnings.catch_warnings():  # torchvision >= 0.29 marks its decoders deprecated (for TorchCodec)
            warnings.filterwarnings("ignore", message=".*decoding and encoding capabilities")
            try:
                images = decode_jpeg(data, mode=ImageReadMode.RGB, device=dev)
            except RuntimeError:  # a PNG or an unsupported JPEG in the batch: decode one by one on the CPU
                images = []
                for d in data:
                    try:
                        images.append(decode_jpeg(d, mode=ImageReadMode.RGB, device=dev))
                    except RuntimeError:
                        images.append(decode_image(d, mode=ImageReadMode.RGB).to(dev))
        out = torch.stack([self._augment(img) for img in images])  # (B, 3, crop, crop) float in [0, 255]
        return (out - self._mean) / self._std

    def _augment(self, img: torch.Tensor) -> torch.Tensor:
        """uint8 (3, H, W) -> float (3, crop, crop): the train / eval transform of the PIL path, on tensors."""
        if not self.augment:
            return TF.center_crop(TF.resize(img.float(), [self.resize], antialias=True), [self.crop])
        top, left, h, w = T.RandomResizedCrop.get_params(img, list(CROP_SCALE), list(CROP_RATIO))  # torch RNG
        patch = TF.resize(img[:, top : top + h, left : left + w].float(), [self.crop, self.crop], antialias=True)
        return patch.flip(-1) if float(torch.rand(())) < 0.5 else patch


def _worker_options(workers: int, persistent: bool | None, prefetch_factor: int | None) -> dict[str, Any]:
    """DataLoader's worker keywords: ``workers`` processes, kept between epochs unless ``persistent`` is False."""
    options: dict[str, Any] = {"num_workers": workers}
    if workers > 0:
        options["persistent_workers"] = True if persistent is None else persistent
        if prefetch_factor is not None:
            options["prefetch_factor"] = prefetch_factor
    return options


def _torch_loader(
    dataset: Dataset, sampler: Any, collate: Any, batch: int, drop_last: bool, pin: bool, seed: int, options: dict
) -> DataLoader:
    """The DataLoader of one rank: ``batch`` images a step from ``sampler`` (made skippable for a resume), the
    workers seeded from ``seed``. Encoded bytes (decode="device") are not worth pinning (``pin`` False)."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch,
        sampler=_SkippableSampler(sampler),
        collate_fn=collate,
        drop_last=drop_last,
        pin_memory=pin,
        generator=generator,
        **options,
    )


def make_imagenet_loader(
    root: str | Path,
    split: Literal["train", "val"] | str = "train",
    batch_size: int = 256,
    *,
    train: bool | None = None,
    augment: bool | None = None,
    indices: Sequence[int] | None = None,
    workers: int = 8,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    drop_last: bool | None = None,
    pin_memory: bool | None = None,
    persistent_workers: bool | None = None,
    prefetch_factor: int | None = None,
    decode: Literal["pil", "device"] = "pil",
    device: str | torch.device | None = None,
    crop: int = 224,
    resize: int = 256,
    channels_last: bool = False,
) -> ImageNetLoader:
    """A loader over ``root/split`` with the recipe's augmentation (see the module docstring).

    Args:
        root: folder holding ``train/`` and ``val/``.
        split: sub-folder to read.
        batch_size: GLOBAL batch size (a multiple of ``world_size``).
        train: shuffling and dropping the last partial batch (and the default of ``augment``); default
            ``split == "train"``.
        augment: random resized crops and flips; off: the evaluation transform (resize, centre crop). Default
            ``train``.
        indices: use only these images of the split (positions in the class-sorted ImageFolder), e.g. a subset.
        workers: DataLoader worker processes.
        rank: this process's rank; with ``world_size > 1`` a ``DistributedSampler`` shards a training set, and
            evaluation takes every ``world_size``-th image from ``rank`` (no padding: each image counts once).
        world_size: number of data-parallel processes.
        seed: shuffle seed (epoch e uses seed + e on every rank) and worker-seed base.
        drop_last: drop the last partial batch; default ``train``. (A training ``DistributedSampler`` without it
            pads the last batch with repeated images so all ranks agree.)
        pin_memory: page-locked batches for fast host-to-GPU copies; default: CUDA is available.
        persistent_workers: keep the workers between epochs; default ``workers > 0``.
        prefetch_factor: batches prefetched per worker (DataLoader's default when None).
        decode: ``"pil"`` (decode + augment in the workers) or ``"device"`` (decode + augment on ``device``).
        device: where batches are delivered (and, with ``decode="device"``, decoded); None keeps them on the CPU
            for ``"pil"`` and means CUDA if available for ``"device"``.
        crop: training / evaluation crop size.
        resize: evaluation shorter-side resize before the centre crop.
        channels_last: return images in ``torch.channels_last`` memory format.
    """
    _check_options(decode, rank, world_size, batch_size)
    train = split == "train" if train is None else train
    augment = train if augment is None else augment
    drop_last = train if drop_last is None else drop_last
    folder, collate, dev = _folder(root, split, decode, augment, crop, resize, device)
    dataset: Dataset = folder if indices is None else Subset(folder, list(indices))
    sampler = _sampler(dataset, train, drop_last, rank, world_size, seed)
    pin = (torch.cuda.is_available() if pin_memory is None else pin_memory) and decode == "pil"
    batch, options = batch_size // world_size, _worker_options(workers, persistent_workers, prefetch_factor)
    loader = _torch_loader(dataset, sampler, collate, batch, drop_last, pin, seed, options)
    out = ImageNetLoader(
        folder,
        loader,
        sampler,
        train=train,
        augment=augment,
        seed=seed,
        decode=decode,
        device=dev,
        crop=crop,
        resize=resize,
        channels_last=channels_last,
    )
    out.set_epoch(0)
    return out


def _check_options(decode: str, rank: int, world_size: int, batch_size: int) -> None:
    """ValueError for a decode mode, rank or batch size that cannot work."""
    if decode not in ("pil", "device"):
        raise ValueError(f"decode must be 'pil' or 'device', got {decode!r}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
    if batch_size < world_size or batch_size % world_size:
        raise ValueError(f"batch_size ({batch_size}) must be a positive multiple of world_size ({world_size})")


def _folder(
    root: str | Path, split: str, decode: str, augment: bool, crop: int, resize: int, device: str | torch.device | None
) -> tuple[ImageFolder, Any, torch.device | None]:
    """(ImageFolder, collate function, delivery device) of ``split``: decoded and transformed in the workers
    (``pil``), or raw bytes decoded on the device (``device``: CUDA if available when ``device`` is None)."""
    dev = None if device is None else torch.device(device)
    if decode == "pil":
        transform = train_transform(crop) if augment else eval_transform(crop, resize)
        return imagenet_folder(root, split, transform), None, dev
    if dev is None:
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        warnings.warn("decode='device': CUDA is not available, decoding JPEGs on the CPU", stacklevel=3)
        dev = torch.device("cpu")
    return ImageFolder(str(_split_dir(root, split)), loader=_read_bytes), _collate_encoded, dev


def _sampler(dataset: Dataset, train: bool, drop_last: bool, rank: int, world_size: int, seed: int) -> Sampler:
    """Training: shuffled (``DistributedSampler`` over ranks); evaluation: in order (every ``world_size``-th image
    from ``rank`` over ranks, without padding)."""
    if world_size > 1 and train:
        return DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=train, seed=seed, drop_last=drop_last
        )
    if world_size > 1:
        return _ShardSampler(len(dataset), rank, world_size)  # type: ignore[arg-type]
    if train:
        return RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    return SequentialSampler(dataset)


# ------------------------------------------------------------------------------------------------ synthetic data
def make_synthetic_imagefolder(
    root: str | Path,
    classes: int = 3,
    per_class: int = 4,
    size: int | tuple[int, int] = 64,
    splits: Sequence[str] = ("train", "val"),
    fmt: Literal["JPEG", "PNG"] = "JPEG",
    seed: int = 0,
    noise: float = 4.0,
) -> Path:
    """Write a tiny ImageNet-layout folder of random images for tests and docs; returns ``root``.

    Class c's folder is ``n{c:08d}`` (WordNet-id-like, so sorting keeps the order) and its images are Gaussian noise
    of std ``noise`` around a class colour (c + 1) * 255 / (classes + 1) in every channel (clipped to [0, 255]), so a
    label can be read back from the pixels.

    Args:
        root: output folder (``root/<split>/<class>/<i>.JPEG``).
        classes: number of classes.
        per_class: images per class and split.
        size: image side, or (height, width).
        splits: sub-folders to write.
        fmt: PIL format; the file extension is ``.JPEG`` or ``.png``.
        seed: noise seed.
        noise: pixel noise std (0-255 scale). Nearly flat images (the default) make a network's gradients
            sensitive to rounding (whole regions cross a ReLU together); tests comparing runs use e.g. 40.
    """
    from PIL import Image

    root = Path(root)
    h, w = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    ext = ".JPEG" if fmt == "JPEG" else ".png"
    for split in splits:
        for c in range(classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            level = (c + 1) * 255 / (classes + 1)
            for i in range(per_class):
                pixels = np.clip(level + rng.normal(0, noise, (h, w, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{split}_{c}_{i}{ext}", format=fmt)
    return root
