"""Tests of odearch.data: safe CIFAR reading (synthetic folders in the official format) and the on-device loader."""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import needs_cifar
from datapaths import CIFAR_ROOT
from odearch.data import (
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_CLASSES,
    CifarLoader,
    RestrictedUnpickler,
    dataset_info,
    load_cifar,
    take_first,
    train_val_split,
)
from odearch.data import cifar as cifar_mod

REAL_DATA = CIFAR_ROOT


# ------------------------------------------------------------------------------------------------- synthetic files
def _rows_from_hwc(hwc: np.ndarray) -> np.ndarray:
    """Official row layout built explicitly: 1024 R values, then 1024 G, then 1024 B (each row-major 32 x 32)."""
    n = len(hwc)
    return np.concatenate([hwc[..., c].reshape(n, 1024) for c in range(3)], axis=1)


def _dump(path: Path, obj: object, legacy_numpy_path: bool = False) -> None:
    """Pickles `obj`; `legacy_numpy_path` rewrites the numpy module name to the `numpy.core` of the official files."""
    # Protocol 3: globals spelled as text lines (as in the Python 2 originals) and a native bytes opcode (protocol 2
    # written by Python 3 would route bytes through `_codecs.encode`, which the restricted unpickler refuses).
    data = pickle.dumps(obj, protocol=3)
    if legacy_numpy_path:
        data = data.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    path.write_bytes(data)


def _write_cifar10(root: Path, n_per_batch: int = 3, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Writes a small `cifar-10-batches-py/` under `root`; returns {file: (hwc uint8 images, labels)}."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    out = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        hwc = rng.integers(0, 256, (n_per_batch, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, n_per_batch).tolist()
        d = {
            b"batch_label": name.encode(),
            b"labels": labels,
            b"data": _rows_from_hwc(hwc),
            b"filenames": [f"img_{i}.png".encode() for i in range(n_per_batch)],
        }
        _dump(folder / name, d, legacy_numpy_path=True)
        out[name] = (hwc, np.array(labels))
    return out


def _write_cifar100(root: Path, n: int = 4, seed: int = 1) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    out = {}
    for name in ("train", "test"):
        hwc = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        fine = rng.integers(0, 100, n)
        fine[0] = 99  # exercise the top of the label range
        d = {
            b"filenames": [b"x.png"] * n,
            b"batch_label": b"b",
            b"fine_labels": fine.tolist(),
            b"coarse_labels": (fine // 5).tolist(),
            b"data": _rows_from_hwc(hwc),
        }
        _dump(folder / name, d)
        out[name] = (hwc, fine)
    return out


def _check_round_trip(images: torch.Tensor, labels: torch.Tensor, hwc: np.ndarray, expected: np.ndarray) -> None:
    assert images.dtype == torch.uint8 and images.shape == (len(hwc), 3, 32, 32)
    assert labels.dtype == torch.int64
    assert torch.equal(images.permute(0, 2, 3, 1), torch.from_numpy(hwc))  # CHW: channel c is plane c of the row
    assert torch.equal(labels, torch.from_numpy(expected).long())


# ------------------------------------------------------------------------------------------------- reading
class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_restricted_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({b"data": _Evil(marker), b"labels": [0]}, protocol=3)
    with pytest.raises(pickle.UnpicklingError, match=r"system"):
        RestrictedUnpickler(io.BytesIO(payload), encoding="bytes").load()
    # Through load_cifar too: the forbidden global is reported as such, not as a "corrupt file".
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(payload)
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to unpickle global .*system"):
        load_cifar(tmp_path, train=False, download=False, check_size=False)
    assert not marker.exists()


@pytest.mark.parametrize("as_folder", [False, True])
def test_cifar10_round_trip(tmp_path, as_folder):
    written = _write_cifar10(tmp_path)
    root = tmp_path / "cifar-10-batches-py" if as_folder else tmp_path
    x, y = load_cifar(root, "cifar10", train=True, download=False, check_size=False)
    hwc = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    lab = np.concatenate([written[f"data_batch_{i}"][1] for i in range(1, 6)])
    _check_round_trip(x, y, hwc, lab)
    x, y = load_cifar(root, "CIFAR-10", train=False, download=False, check_size=False)
    _check_round_trip(x, y, *written["test_batch"])


def test_root_from_environment(tmp_path, monkeypatch):
    written = _write_cifar10(tmp_path)
    monkeypatch.setenv("ODEARCH_DATA", str(tmp_path))
    x, y = load_cifar(None, train=False, download=False, check_size=False)
    _check_round_trip(x, y, *written["test_batch"])


def test_cifar100_round_trip(tmp_path):
    written = _write_cifar100(tmp_path)
    for train, name in ((True, "train"), (False, "test")):
        x, y = load_cifar(tmp_path, "cifar100", train=train, download=False, check_size=False)
        _check_round_trip(x, y, *written[name])


def test_full_size_is_checked(tmp_path):
    _write_cifar10(tmp_path)
    with pytest.raises(ValueError, match="expected 50000"):
        load_cifar(tmp_path, download=False)


def test_missing_without_download(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        load_cifar(tmp_path / "nowhere", download=False)
    msg = str(e.value)
    assert "\n" not in msg and "data_batch_1" in msg and str(tmp_path / "nowhere") in msg
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in msg


class _FakeResponse(io.BytesIO):
    """Stands in for an HTTP response; optionally fails after the first chunk, like a dropped connection."""

    def __init__(self, data: bytes, fail_after_first: bool = False) -> None:
        super().__init__(data)
        self.fail_after_first, self.reads = fail_after_first, 0

    def read(self, size: int | None = -1) -> bytes:
        self.reads += 1
        if self.fail_after_first and self.reads > 1:
            raise ConnectionResetError("connection dropped")
        return super().read(min(size, 1000) if size and size > 0 else size)


@pytest.mark.parametrize("mode", ["offline", "dropped", "bad_md5"])
def test_failed_download_leaves_nothing(tmp_path, monkeypatch, mode):
    def urlopen(*args, **kwargs):
        if mode == "offline":
            raise urllib.error.URLError("no network")
        return _FakeResponse(b"not the archive" * 500, fail_after_first=mode == "dropped")

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    existing, fresh = tmp_path / "existing", tmp_path / "fresh" / "data"
    existing.mkdir()
    for root in (existing, fresh):
        with pytest.raises(FileNotFoundError, match="download failed") as e:
            load_cifar(root, download=True)
        assert str(root) in str(e.value)
    assert list(existing.iterdir()) == [] and not fresh.exists()


def _tar_gz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_download_verifies_and_extracts(tmp_path, monkeypatch):
    src = tmp_path / "src"
    written = _write_cifar10(src)
    folder = src / "cifar-10-batches-py"
    archive = _tar_gz({f"cifar-10-batches-py/{p.name}": p.read_bytes() for p in folder.iterdir()})
    spec = dataclasses.replace(cifar_mod._SPECS["cifar10"], md5=cifar_mod.hashlib.md5(archive).hexdigest())
    monkeypatch.setitem(cifar_mod._SPECS, "cifar10", spec)
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: _FakeResponse(archive))
    dest = tmp_path / "dest"
    x, y = load_cifar(dest, train=False, download=True, check_size=False)
    _check_round_trip(x, y, *written["test_batch"])
    assert sorted(p.name for p in dest.iterdir()) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]


def test_extraction_rejects_path_traversal(tmp_path):
    archive = tmp_path / "evil.tar.gz"
    archive.write_bytes(_tar_gz({"cifar-10-batches-py/../../escaped": b"x"}))
    (tmp_path / "out").mkdir()
    with pytest.raises(ValueError, match="unsafe archive member"):
        cifar_mod._safe_extract(archive, tmp_path / "out", "cifar-10-batches-py")
    assert not (tmp_path / "escaped").exists() and list((tmp_path / "out").iterdir()) == []


def test_truncated_and_malformed_files(tmp_path):
    _write_cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    good = batch.read_bytes()
    batch.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_cifar(tmp_path, train=False, download=False, check_size=False)
    _dump(batch, {b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]})
    with pytest.raises(ValueError, match=r"shape \(n, 3072\)"):
        load_cifar(tmp_path, train=False, download=False, check_size=False)
    _dump(batch, {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]})
    with pytest.raises(ValueError, match="labels outside"):
        load_cifar(tmp_path, train=False, download=False, check_size=False)


def test_dataset_info_and_subsets():
    info = dataset_info("cifar10")
    assert info["num_classes"] == 10 and info["mean"] == CIFAR10_MEAN and info["classes"] == CIFAR10_CLASSES
    info = dataset_info("cifar100")
    assert info["num_classes"] == 100 and len(set(CIFAR100_CLASSES)) == 100
    assert list(CIFAR100_CLASSES) == sorted(CIFAR100_CLASSES)
    with pytest.raises(ValueError, match="unknown dataset"):
        dataset_info("mnist")

    x, y = torch.arange(20).view(20, 1), torch.arange(20)
    (xt, yt), (_, yv) = train_val_split(x, y, val_size=5, seed=3)
    assert len(yt) == 15 and len(yv) == 5 and set(yt.tolist()).isdisjoint(yv.tolist())
    assert torch.equal(xt[:, 0], yt) and torch.equal(yt, yt.sort().values)
    (_, yt2), _ = train_val_split(x, y, val_size=5, seed=3)
    (_, yt3), _ = train_val_split(x, y, val_size=5, seed=4)
    assert torch.equal(yt, yt2) and not torch.equal(yt, yt3)
    assert torch.equal(take_first(x, y, 7)[1], y[:7])
    for n in (0, 21):
        with pytest.raises(ValueError, match="subset size"):
            take_first(x, y, n)


@pytest.mark.slow
@needs_cifar
def test_real_cifar10():
    x, y = load_cifar(REAL_DATA, train=True, download=False)
    assert x.shape == (50000, 3, 32, 32) and y.shape == (50000,)
    assert torch.equal(y.unique(), torch.arange(10))
    mean = (x.float() / 255).mean(dim=(0, 2, 3))
    assert torch.allclose(mean, torch.tensor(CIFAR10_MEAN), atol=1e-3), mean
    xt, yt = load_cifar(REAL_DATA, train=False, download=False)
    assert xt.shape == (10000, 3, 32, 32) and torch.equal(torch.bincount(yt), torch.full((10,), 1000))


# ------------------------------------------------------------------------------------------------- loader
N, B = 37, 8
MEAN, STD = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (N, 3, 32, 32), generator=g, dtype=torch.uint8)
    return images, torch.randint(0, 10, (N,), generator=g)


def _loader(data, train=True, **kw) -> CifarLoader:
    kw.setdefault("batch_size", B)
    return CifarLoader(*data, train=train, mean=CIFAR10_MEAN, std=CIFAR10_STD, **kw)


def _normalise(img: torch.Tensor) -> torch.Tensor:
    return (img.to(torch.float32) / 255 - MEAN) / STD


def _epoch(loader: CifarLoader, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.set_epoch(epoch)
    return list(loader)


def test_eval_batches_are_normalised_images_in_order(data):
    loader = _loader(data, train=False)
    batches = _epoch(loader, 0)
    assert len(loader) == len(batches) == 5 and loader.num_samples == N and len(batches[-1][1]) == N % B
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    assert torch.equal(x, _normalise(data[0])) and torch.equal(y, data[1])


def test_shapes_dtypes_memory_format(data):
    x, y = next(iter(_loader(data)))
    assert x.shape == (B, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    x, _ = next(iter(_loader(data, channels_last=False, dtype=torch.bfloat16)))
    assert x.dtype == torch.bfloat16 and x.is_contiguous()


def test_train_crops_match_reference(data):
    loader = _loader(data)
    perm, offsets, flips = loader._epoch_plan(2)
    assert sorted(perm.tolist()) == list(range(N)) and 0 <= offsets.min() and offsets.max() <= 8
    assert 0 < flips.sum() < N
    padded = F.pad(data[0], (4, 4, 4, 4))
    for b, (x, y) in enumerate(_epoch(loader, 2)):
        for i in range(len(y)):
            pos = b * B + i
            top, left = offsets[pos].tolist()
            crop = padded[perm[pos], :, top : top + 32, left : left + 32]
            if flips[pos]:
                crop = torch.flip(crop, dims=[2])
            assert torch.equal(x[i], _normalise(crop[None])[0]) and y[i] == data[1][perm[pos]]


def test_padding_is_zero_and_flip_mirrors(data, monkeypatch):
    loader = _loader(data, shuffle=False)
    n = torch.arange(N)
    # Corner crop: the first 4 rows / columns come from the zero padding.
    monkeypatch.setattr(loader, "_epoch_plan", lambda e: (n, torch.zeros(N, 2, dtype=torch.long), n < 0))
    x, _ = next(iter(loader))
    zero = _normalise(torch.zeros(1, 3, 1, 1, dtype=torch.uint8))
    assert torch.equal(x[:, :, :4, :], zero.expand(B, 3, 4, 32))
    assert torch.equal(x[:, :, :, :4], zero.expand(B, 3, 32, 4))
    assert torch.equal(x[:, :, 4:, 4:], _normalise(data[0][:B, :, :28, :28]))
    # Centred crop with every flip on: the mirrored original image.
    monkeypatch.setattr(loader, "_epoch_plan", lambda e: (n, torch.full((N, 2), 4), n >= 0))
    x, _ = next(iter(loader))
    assert torch.equal(x, _normalise(data[0][:B].flip(3)))


def test_epochs_are_deterministic_and_leave_global_rng_alone(data):
    loader = _loader(data, seed=5)
    rng = torch.get_rng_state()
    torch.manual_seed(123)
    first = _epoch(loader, 3)
    torch.manual_seed(456)
    again = _epoch(loader, 3)
    other = _epoch(_loader(data, seed=5), 3)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again, strict=True))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, other, strict=True))
    assert not torch.equal(_epoch(loader, 4)[0][0], first[0][0])
    assert not torch.equal(_epoch(_loader(data, seed=6), 3)[0][0], first[0][0])
    torch.set_rng_state(rng)
    _epoch(loader, 0)
    assert torch.equal(torch.get_rng_state(), rng)


@pytest.mark.parametrize("train", [True, False])
def test_sharding_splits_global_batches(data, train):
    whole = _epoch(_loader(data, train=train), 1)
    ranks = [_loader(data, train=train, rank=r, world_size=2) for r in range(2)]
    parts = [_epoch(r, 1) for r in ranks]
    assert len(ranks[0]) == len(ranks[1]) == len(whole)
    assert ranks[0].num_samples + ranks[1].num_samples == sum(len(b[1]) for b in whole)
    for (x, y), (x0, y0), (x1, y1) in zip(whole, *parts, strict=True):
        if len(y) == B:
            assert len(y0) == len(y1) == B // 2
        assert torch.equal(x, torch.cat([x0, x1])) and torch.equal(y, torch.cat([y0, y1]))
    with pytest.raises(ValueError, match="multiple of world_size"):
        _loader(data, batch_size=9, world_size=2, rank=0)
    with pytest.raises(ValueError, match="rank"):
        _loader(data, rank=2, world_size=2)


def test_drop_last_and_len(data):
    loader = _loader(data)  # train: drop_last by default
    batches = _epoch(loader, 0)
    assert len(loader) == len(batches) == N // B and loader.num_samples == N // B * B
    assert all(len(y) == B for _, y in batches)
    assert len(set(torch.cat([y for _, y in batches]).tolist())) <= N
    loader = _loader(data, drop_last=False)
    batches = _epoch(loader, 0)
    assert len(loader) == len(batches) == N // B + 1 and len(batches[-1][1]) == N % B and loader.num_samples == N
    with pytest.raises(ValueError, match="uint8"):
        CifarLoader(data[0].float(), data[1], B, train=True, mean=CIFAR10_MEAN, std=CIFAR10_STD)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(data):
    # The plan is drawn on the CPU, so a CUDA loader must pick the same images, crops and flips.
    cpu, gpu = _epoch(_loader(data), 1), _epoch(_loader(data, device="cuda"), 1)
    for (x, y), (xg, yg) in zip(cpu, gpu, strict=True):
        assert xg.is_cuda and torch.equal(y, yg.cpu())
        torch.testing.assert_close(xg.cpu(), x, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------------ data set table
def test_the_data_set_table_is_what_config_and_cli_read() -> None:
    """One table: the config's choices, recipe defaults and classes and the CLI's ``--dataset`` choices are its."""
    from odearch.cli import build_parser
    from odearch.data import CIFAR100_MEAN, DATASETS, canonical_name, get_dataset
    from odearch.train import RECIPES, TrainConfig

    assert set(DATASETS) == {"cifar10", "cifar100", "imagenet"}
    assert RECIPES == {name: (d.epochs, d.milestones) for name, d in DATASETS.items()}
    field = next(f for f in dataclasses.fields(TrainConfig) if f.name == "dataset")
    assert field.metadata["choices"] == tuple(DATASETS)
    for name, spec in DATASETS.items():
        cfg = TrainConfig(model="resnet20", dataset=name.upper())
        assert (cfg.dataset, cfg.num_classes, cfg.epochs, cfg.milestones) == (
            name,
            spec.num_classes,
            spec.epochs,
            spec.milestones,
        )
    assert DATASETS["cifar100"].mean == CIFAR100_MEAN and DATASETS["cifar10"].num_classes == len(CIFAR10_CLASSES)
    eval_parser = build_parser()._subparsers._group_actions[0].choices["eval"]  # type: ignore[union-attr]
    dataset_flag = next(a for a in eval_parser._actions if "--dataset" in a.option_strings)
    assert tuple(dataset_flag.choices) == tuple(DATASETS)
    assert canonical_name("CIFAR-100") == canonical_name("cifar_100") == "cifar100"
    assert get_dataset("ImageNet") is DATASETS["imagenet"]
    with pytest.raises(ValueError, match=r"unknown dataset 'mnist'; expected one of \['cifar10'"):
        get_dataset("mnist")


@pytest.mark.slow
@pytest.mark.skipif(not (CIFAR_ROOT / "cifar-10-batches-py").is_dir(), reason="needs CIFAR-10")
def test_the_table_builds_the_training_splits_and_the_test_loader() -> None:
    """The training side and ``odearch eval`` read the same test images through the table's builders; the held-out
    split does not depend on the training seed (VAL_SPLIT_SEED)."""
    from odearch.data import DATASETS, VAL_SPLIT_SEED, make_test_loader
    from odearch.train import TrainConfig

    spec = DATASETS["cifar10"]
    cfg = TrainConfig(
        model="resnet20",
        data_dir=str(CIFAR_ROOT),
        download=False,
        val_split=100,
        subset=64,
        eval_subset=50,
        batch_size=32,
    )
    splits = spec.splits(cfg, torch.device("cpu"), 0, 1)
    assert (splits.num_train, set(splits.evals), splits.evals["val"].num_images) == (64, {"val", "test"}, 100)
    other = spec.splits(cfg.replace(seed=7), torch.device("cpu"), 0, 1)
    assert torch.equal(splits.evals["val"].labels, other.evals["val"].labels) and VAL_SPLIT_SEED == 0
    loader, classes = make_test_loader(cfg, "cpu", 50, subset=50)
    (x, y), (x_run, y_run) = next(iter(loader)), next(iter(splits.evals["test"]))
    assert classes == list(CIFAR10_CLASSES) and torch.equal(y, y_run) and torch.equal(x, x_run)
