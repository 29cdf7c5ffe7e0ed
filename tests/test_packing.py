"""Packed (xz) weights files (:mod:`odearch.packing`): lossless, plain safetensors read as they are, damage refused."""

from __future__ import annotations

import lzma
from pathlib import Path

import pytest
import torch
from safetensors.torch import save

from odearch import packing
from odearch.train.checkpoint import CheckpointError, weights_from_bytes


@pytest.fixture
def plain() -> bytes:
    torch.manual_seed(0)
    return save({"w": torch.randn(64, 64), "k": torch.tensor([0.25])}, {"model": '"lm_resnet20"'})


def test_pack_is_lossless_and_plain_bytes_pass_through(plain: bytes) -> None:
    packed = packing.pack_weights(plain)
    assert packing.is_packed(packed) and not packing.is_packed(plain)
    assert packing.unpack_weights(packed) == plain and packing.unpack_weights(plain) is plain
    tensors, meta = weights_from_bytes(packed, "x.safetensors.xz")
    assert meta == {"model": "lm_resnet20"} and torch.equal(tensors["k"], torch.tensor([0.25]))


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda p: p[:-20], "truncated xz stream|damaged xz stream"),
        (lambda p: p[:40] + bytes([p[40] ^ 1]) + p[41:], "damaged xz stream"),
        (lambda p: p + b"\0junk", "bytes after the end|damaged xz stream"),
    ],
)
def test_a_damaged_stream_is_refused(plain: bytes, damage: object, match: str) -> None:
    bad = damage(packing.pack_weights(plain))  # type: ignore[operator]
    with pytest.raises(ValueError, match=match):
        packing.unpack_weights(bad)
    with pytest.raises(CheckpointError, match="not a valid safetensors checkpoint"):
        weights_from_bytes(bad, "x.safetensors.xz")


def test_unpacking_stops_at_the_size_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = lzma.compress(b"\0" * 10_000, format=lzma.FORMAT_XZ)
    monkeypatch.setattr(packing, "MAX_UNPACKED_BYTES", 1_000)
    with pytest.raises(ValueError, match="more than 1000 bytes"):
        packing.unpack_weights(bomb)
    monkeypatch.setattr(packing, "MAX_UNPACKED_BYTES", 10_000)
    assert packing.unpack_weights(bomb) == b"\0" * 10_000


def test_weights_stem_drops_both_extensions() -> None:
    assert packing.weights_stem(Path("w/lm_resnet20.cifar10_s0.safetensors.xz")) == "lm_resnet20.cifar10_s0"
    assert packing.weights_stem(Path("w/lm_resnet20.cifar10_s0.safetensors")) == "lm_resnet20.cifar10_s0"
