"""On-device CIFAR batch loader with the paper's augmentation (after airbench's ``CifarLoader``).

The whole set lives on the device as uint8. Each batch is built with a handful of batched tensor ops: one
advanced-indexing gather takes a random 32 x 32 window of the zero-padded image (with the horizontal flip folded
into the column indices), then one fused normalisation. Every random choice of an epoch (order, crop offsets,
flips) is drawn up front from a CPU ``torch.Generator`` seeded by (seed, epoch), so an epoch is reproducible on any
device and any number of ranks, and the global RNG is never touched.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

PAD = 4  # zero padding on each side before the random crop (He et al. 2016, used by the LM-ResNet paper)


class CifarLoader:
    """Iterates (images, labels) batches of an in-memory image set, augmenting and normalising on the device.

    Args:
        images: uint8 tensor (N, C, H, W).
        labels: integer tensor (N,).
        batch_size: GLOBAL batch size; with ``world_size`` ranks each rank yields ``batch_size // world_size`` images.
        train: selects the defaults of ``drop_last``, ``shuffle`` and ``augment`` (True for training, False for eval).
        mean: per-channel mean of pixels scaled to [0, 1].
        std: per-channel standard deviation of pixels scaled to [0, 1].
        device: where the data is stored and batches are built.
        seed: base seed; epoch e uses a generator seeded from (seed, e).
        drop_last: drop the final partial global batch (default: ``train``).
        shuffle: random order each epoch (default: ``train``).
        augment: 4-pixel zero padding + random crop + random horizontal flip (default: ``train``).
        channels_last: return images in ``torch.channels_last`` memory format.
        dtype: floating dtype of the returned images (normalisation is computed in float32 first).
        rank: index of this process among ``world_size``.
        world_size: number of processes sharing each global batch.

    Call ``set_epoch(e)`` before iterating epoch e (as with ``DistributedSampler``); the epoch is not advanced
    automatically, so iterating twice without ``set_epoch`` repeats the same batches.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        train: bool,
        mean: Sequence[float],
        std: Sequence[float],
        device: str | torch.device = "cpu",
        seed: int = 0,
        drop_last: bool | None = None,
        shuffle: bool | None = None,
        augment: bool | None = None,
        channels_last: bool = True,
        dtype: torch.dtype = torch.float32,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be a uint8 (N, C, H, W) tensor, got {images.dtype} {tuple(images.shape)}")
        if labels.shape != images.shape[:1]:
            raise ValueError(f"labels must have shape ({len(images)},), got {tuple(labels.shape)}")
        if len(mean) != images.shape[1] or len(std) != images.shape[1]:
            raise ValueError(f"mean and std need {images.shape[1]} entries, got {len(mean)} and {len(std)}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got rank={rank}, world_size={world_size}")
        if batch_size < 1 or batch_size % world_size:
            raise ValueError(f"batch_size ({batch_size}) must be a positive multiple of world_size ({world_size})")
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating dtype, got {dtype}")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.batch_size, self.rank, self.world_size, self.seed = batch_size, rank, world_size, seed
        self.drop_last = train if drop_last is None else drop_last
        self.shuffle = train if shuffle is None else shuffle
        self.augment = train if augment is None else augment
        self.channels_last, self.dtype, self.device = channels_last, dtype, torch.device(device)
        self.epoch = 0
        self.num_images, _, self.height, self.width = images.shape
        # Pad the whole set once; crops are then plain gathers. Only the padded copy is kept (the crop at offset
        # PAD is the original image), so augmentation costs (40/32)^2 of the set's memory, not 1 + that.
        images = images.to(self.device)
        self._src = F.pad(images, (PAD, PAD, PAD, PAD)) if self.augment else images
        self.labels = labels.to(self.device, torch.int64)
        self._mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch whose order and augmentation the next iteration produces."""
        if epoch < 0:
            raise ValueError(f"epoch must be non-negative, got {epoch}")
        self.epoch = epoch

    def __len__(self) -> int:
        """Number of batches per epoch (the same on every rank)."""
        full, rest = divmod(self.num_images, self.batch_size)
        return full + (rest > 0 and not self.drop_last)

    @property
    def num_samples(self) -> int:
        """Number of images this rank yields per epoch."""
        return sum(hi - lo for lo, hi in map(self._rank_range, range(len(self))))

    def _rank_range(self, batch: int) -> tuple[int, int]:
        """[lo, hi) positions in the epoch order of this rank's slice of global batch ``batch``.

        A full batch splits into ``world_size`` equal contiguous slices; a final partial batch splits like
        ``torch.tensor_split`` (sizes differ by at most one, possibly empty) so every rank yields ``len(self)`` batches.
        """
        start = batch * self.batch_size
        n = min(self.batch_size, self.num_images - start)
        q, r = divmod(n, self.world_size)
        lo = start + self.rank * q + min(self.rank, r)
        return lo, lo + q + (self.rank < r)

    def _epoch_plan(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Draws epoch ``epoch``'s random choices on the CPU, a pure function of (seed, epoch).

        Returns:
            perm: (N,) int64, image index at each position of the epoch order.
            offsets: (N, 2) int64, (top, left) of the crop in the padded image for the image at each position
                (all PAD, i.e. no shift, without augmentation).
            flips: (N,) bool, whether the image at each position is mirrored left-right.
        """
        # SeedSequence mixes (seed, epoch) into well-spread state, so nearby seeds/epochs give unrelated streams.
        state = int(np.random.SeedSequence([self.seed, epoch]).generate_state(1, np.uint64)[0])
        g = torch.Generator().manual_seed(state)
        n = self.num_images
        perm = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        if self.augment:
            offsets = torch.randint(0, 2 * PAD + 1, (n, 2), generator=g)
            flips = torch.randint(0, 2, (n,), generator=g).bool()
        else:
            offsets, flips = torch.full((n, 2), PAD), torch.zeros(n, dtype=torch.bool)
        return perm, offsets, flips

    def _batch(self, idx: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
        """Crops, flips and normalises the images ``idx`` (device tensors), returning (b, C, H, W) ``self.dtype``."""
        if self.augment:
            rows = offsets[:, :1] + torch.arange(self.height, device=self.device)  # (b, H)
            cols = torch.arange(self.width, device=self.device).expand(len(idx), -1)
            cols = offsets[:, 1:] + torch.where(flips[:, None], self.width - 1 - cols, cols)  # flip = reversed cols
            chans = torch.arange(self._src.shape[1], device=self.device)
            x = self._src[
                idx[:, None, None, None], chans[None, :, None, None], rows[:, None, :, None], cols[:, None, None, :]
            ]
        else:
            x = self._src[idx]
        x = (x.to(torch.float32) / 255 - self._mean) / self._std
        x = x.to(self.dtype)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        perm, offsets, flips = (t.to(self.device) for t in self._epoch_plan(self.epoch))
        for b in range(len(self)):
            lo, hi = self._rank_range(b)
            idx = perm[lo:hi]
            yield self._batch(idx, offsets[lo:hi], flips[lo:hi]), self.labels[idx]
