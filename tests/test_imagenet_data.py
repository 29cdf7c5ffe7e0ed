"""ImageNet data: ImageFolder layout, the recipe's transforms, the loader (workers, sharding, device decoding)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from odearch.data import (
    IMAGENET_MEAN,
    IMAGENET_RECIPE,
    IMAGENET_STD,
    eval_transform,
    imagenet_folder,
    make_imagenet_loader,
    make_synthetic_imagefolder,
    train_transform,
)

CLASSES = 3
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_imagefolder(tmp_path_factory.mktemp("imagenet"), classes=CLASSES, per_class=4, size=64)


def label_from_pixels(images: torch.Tensor) -> torch.Tensor:
    """The class whose colour (c + 1) / (CLASSES + 1) is nearest each image's mean (synthetic folders only)."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    level = (images.float().cpu() * std + mean).mean(dim=(1, 2, 3))  # (B,) in [0, 1]
    return (level * (CLASSES + 1) - 1).round().long()


def test_synthetic_folder_layout(root: Path) -> None:
    ds = imagenet_folder(root, "train")
    assert ds.classes == [f"n{c:08d}" for c in range(CLASSES)] and len(ds) == CLASSES * 4
    assert len(list((root / "val").rglob("*.JPEG"))) == CLASSES * 4


def test_transforms_shapes() -> None:
    img = Image.new("RGB", (300, 200), color=(10, 200, 30))
    assert eval_transform()(img).shape == (3, 224, 224)
    x = train_transform()(img)
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    assert eval_transform(crop=32, resize=40)(img).shape == (3, 32, 32)


def test_train_loader_yields_normalised_224_crops_with_correct_labels(root: Path) -> None:
    loader = make_imagenet_loader(root, "train", batch_size=4, workers=0)
    assert loader.num_classes == CLASSES and len(loader) == 3
    seen = []
    for x, y in loader:
        assert x.shape == (4, 3, 224, 224) and x.dtype == torch.float32 and y.dtype == torch.int64
        assert torch.equal(label_from_pixels(x), y)
        seen += y.tolist()
    assert sorted(seen) == sorted([c for c in range(CLASSES) for _ in range(4)])


def test_eval_loader_is_ordered_and_keeps_the_last_batch(root: Path) -> None:
    loader = make_imagenet_loader(root, "val", batch_size=5, workers=0)
    batches = list(loader)
    assert [len(y) for _, y in batches] == [5, 5, 2]  # no drop_last in evaluation
    labels = torch.cat([y for _, y in batches])
    assert labels.tolist() == sorted(labels.tolist())  # sequential
    assert all(torch.equal(label_from_pixels(x), y) for x, y in batches)


def test_workers_persistent_and_set_epoch(root: Path) -> None:
    loader = make_imagenet_loader(root, "train", batch_size=4, workers=1)
    assert loader.loader.persistent_workers and loader.loader.num_workers == 1
    order = lambda: [y.tolist() for _, y in loader]  # noqa: E731
    first = order()
    assert order() == first  # the same epoch again
    loader.set_epoch(1)
    assert order() != first


def test_distributed_sampler_shards(root: Path) -> None:
    shards = [make_imagenet_loader(root, "train", batch_size=4, workers=0, rank=r, world_size=2) for r in range(2)]
    assert all(type(s.sampler).__name__ == "DistributedSampler" for s in shards)
    assert all(s.loader.batch_size == 2 for s in shards)  # batch_size is global
    idx = [list(s.sampler) for s in shards]
    assert not set(idx[0]) & set(idx[1]) and len(idx[0]) + len(idx[1]) == CLASSES * 4
    shards[0].set_epoch(3)
    assert shards[0].sampler.epoch == 3 and list(shards[0].sampler) != idx[0]


def test_device_decoding_matches_labels_and_falls_back_without_cuda(root: Path) -> None:
    (root / "train" / "n00000001" / "extra.png").parent.mkdir(exist_ok=True)
    Image.new("RGB", (80, 50), color=(128, 128, 128)).save(root / "train" / "n00000001" / "extra.png")
    try:
        if torch.cuda.is_available():
            loader = make_imagenet_loader(root, "train", batch_size=13, workers=0, decode="device", drop_last=False)
        else:
            with pytest.warns(UserWarning, match="CUDA is not available"):
                loader = make_imagenet_loader(root, "train", batch_size=13, workers=0, decode="device", device="cuda")
        (x, y), *_ = list(loader)
        assert x.shape == (13, 3, 224, 224) and torch.equal(label_from_pixels(x), y.cpu())  # the PNG decodes too
        val = make_imagenet_loader(root, "val", batch_size=4, workers=0, decode="device", device="cpu")
        xs = torch.cat([x for x, _ in val])
        pil = torch.cat([x for x, _ in make_imagenet_loader(root, "val", batch_size=4, workers=0)])
        assert xs.shape == pil.shape == (12, 3, 224, 224)
        assert (xs - pil).abs().mean() < 0.05  # same recipe; PIL and tensor resizing differ slightly
    finally:
        (root / "train" / "n00000001" / "extra.png").unlink()


def test_missing_split_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    with pytest.raises(FileNotFoundError, match=r"ImageNet val/ not found: expected the ImageFolder layout .*/val/"):
        make_imagenet_loader(tmp_path, "val", batch_size=2, workers=0)
    with pytest.raises(FileNotFoundError, match="train/"):
        imagenet_folder(tmp_path / "nowhere", "train")


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="multiple of world_size"):
        make_imagenet_loader(".", batch_size=3, world_size=2, rank=0)
    with pytest.raises(ValueError, match="decode"):
        make_imagenet_loader(".", decode="gpu")  # type: ignore[arg-type]


@pytest.mark.parametrize("model", ["resnet50", "lm_resnet50"])
def test_recipe_configs(model: str) -> None:
    cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "imagenet" / f"{model}.yaml").read_text())
    assert cfg["model"] == model and cfg["dataset"] == "imagenet" and cfg["data_dir"]
    assert {
        k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items() if k in IMAGENET_RECIPE
    } == IMAGENET_RECIPE
