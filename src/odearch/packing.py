"""Shipped weights files stored xz-compressed: lossless, ~30 % smaller for compact (bf16) weights, ~9 % for fp32.

``odearch ship`` writes ``<model>.<tag>.safetensors.xz``, an xz stream of the safetensors bytes; every reader of a
weights file (``create_model(pretrained=True)``, ``odearch eval``, ``odearch analyze``, resume) passes what it read
through :func:`unpack_weights`, which leaves a plain safetensors file as it is: an xz stream starts with its magic
bytes, which no safetensors file can (its first 8 bytes are the header length). ``xz -dk FILE`` gives the plain
``.safetensors`` file to other tools.
"""

from __future__ import annotations

import lzma
from pathlib import Path

__all__ = ["MAX_UNPACKED_BYTES", "XZ_SUFFIX", "is_packed", "pack_weights", "unpack_weights", "weights_stem"]

XZ_MAGIC = b"\xfd7zXZ\x00"
XZ_SUFFIX = ".xz"
MAX_UNPACKED_BYTES = 1 << 32
"""The most bytes a packed weights file may unpack to (4 GiB): a damaged or hostile stream stops there."""


def is_packed(data: bytes) -> bool:
    """Whether ``data`` is an xz stream (a packed weights file) rather than safetensors bytes."""
    return data[: len(XZ_MAGIC)] == XZ_MAGIC


def pack_weights(data: bytes) -> bytes:
    """The xz stream of safetensors bytes ``data`` (preset 9 extreme, CRC64), checked to unpack to ``data``."""
    packed = lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=9 | lzma.PRESET_EXTREME)
    if unpack_weights(packed) != data:  # lzma is lossless; this guards the file ship writes once, cheaply
        raise RuntimeError("xz round trip of the weights changed them")
    return packed


def unpack_weights(data: bytes) -> bytes:
    """The safetensors bytes of a weights file as read: ``data`` unchanged, or the unpacked xz stream.

    Raises:
        ValueError: a damaged or truncated xz stream, trailing bytes after it, or one that unpacks to more than
            :data:`MAX_UNPACKED_BYTES`.
    """
    if not is_packed(data):
        return data
    decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    try:
        out = decompressor.decompress(data, max_length=MAX_UNPACKED_BYTES + 1)
    except lzma.LZMAError as e:
        raise ValueError(f"damaged xz stream ({e})") from None
    if len(out) > MAX_UNPACKED_BYTES:
        raise ValueError(f"the xz stream unpacks to more than {MAX_UNPACKED_BYTES} bytes")
    if not decompressor.eof or decompressor.unused_data:
        raise ValueError("truncated xz stream" if not decompressor.eof else "bytes after the end of the xz stream")
    return out


def weights_stem(path: Path) -> str:
    """The name of a weights file without its extensions: ``lm_resnet20.cifar10_s0`` for ``*.safetensors`` and
    ``*.safetensors.xz`` alike."""
    return Path(path.name.removesuffix(XZ_SUFFIX)).stem
