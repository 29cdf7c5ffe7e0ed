"""Training and inference throughput of our CIFAR pipeline, plain vs LM twins, against a torchvision pipeline (issue 7).

    python benchmarks/throughput.py                       # default models, device auto, 5 repeats
    python benchmarks/throughput.py --models resnet20 --steps 2 --repeats 2 --warmup 1   # smoke run

Measures, in one process and on one device, for every model:

* ``train``: images/s of our training step fed by our on-device `CifarLoader` (the code path of ``odearch train``:
  `train_one_epoch`, SGD momentum 0.9 wd 1e-4, channels_last, bf16 autocast on CUDA / none on CPU, ``--compile``);
* ``reference``: the same model, optimizer and `train_one_epoch` fed the usual way: torchvision ``CIFAR10`` with
  ``RandomCrop(32, 4), RandomHorizontalFlip, ToTensor, Normalize`` and a ``DataLoader`` (``--workers`` processes,
  pinned memory on CUDA, persistent workers), batches copied to the device as channels_last;
* ``infer``: images/s of the forward pass in eval mode under ``no_grad`` and the training autocast (test images).

Each (model, pipeline) gets ``--warmup`` untimed steps, then ``--repeats`` timed windows of ``--steps`` steps
(CUDA synchronised at both ends of a window). Repetitions are interleaved (model 1's train, reference, infer,
model 2's ..., then again), so drift hits every measurement alike. The DataLoader's workers keep prefetching while
other windows run, so each reference window first drains ``2 * --workers`` untimed batches. Ratios use medians:
LM / plain training throughput per pair (target >= 0.97) and ours / reference per model (target >= 1 on CPU,
>= 2 on CUDA). Prints a table and writes ``results/bench/throughput-<device>-<YYYYmmdd-HHMMSS>.json`` (command,
provenance, settings, every sample, medians, ratios, pass/fail).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader
from torchvision import transforms

from odearch.data import CifarLoader, dataset_info, load_cifar
from odearch.train import TrainConfig, TrainStep, build_model, resolve_device, train_one_epoch
from odearch.train.numerics import amp_dtype, configure_numerics
from odearch.train.provenance import provenance
from odearch.train.schedule import lr_schedule

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODELS = ["resnet20", "preact_resnet20", "lm_resnet20", "preact_resnet56", "lm_resnet56"]
LM_TARGET = 0.97  # LM / plain training throughput
REF_TARGET = {"cpu": 1.0, "cuda": 2.0}  # ours / reference training throughput
KINDS = ("train", "reference", "infer")


class TorchvisionCIFAR10(torchvision.datasets.CIFAR10):
    """torchvision's CIFAR10 (its own ``__getitem__``: HWC uint8 array -> PIL image -> transform) over arrays read
    by `load_cifar`. Only torchvision's file reading is bypassed: our copy of the official files holds the same
    images and labels, but was re-pickled (another file order, bytes dict keys), so torchvision's hard-coded md5s
    reject it and its reader looks for str keys. The data are not modified; per-sample work is torchvision's."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Callable[[Any], Any]) -> None:
        torchvision.datasets.VisionDataset.__init__(self, transform=transform)  # skips CIFAR10's reading
        self.train = True
        self.data = images.permute(0, 2, 3, 1).contiguous().numpy()  # (N, 32, 32, 3), as torchvision stores it
        self.targets = labels.tolist()


def default_data_dir() -> Path:
    """$ODEARCH_DATA, else ../shared/data next to the repository, else ./data."""
    if os.environ.get("ODEARCH_DATA"):
        return Path(os.environ["ODEARCH_DATA"])
    shared = (REPO / ".." / "shared" / "data").resolve()
    return shared if shared.is_dir() else Path("data")


def endless(loader: Iterable[Any]) -> Iterator[Any]:
    """Batches of epoch 0, 1, 2, ... (a CifarLoader is told its epoch; a DataLoader reshuffles by itself)."""
    for epoch in itertools.count():
        if isinstance(loader, CifarLoader):
            loader.set_epoch(epoch)
        yield from loader


def to_device(batches: Iterable[Any], device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The usual host-to-device copy of DataLoader batches (channels_last, like our batches)."""
    for x, y in batches:
        yield x.to(device, non_blocking=True, memory_format=torch.channels_last), y.to(device, non_blocking=True)


def train_steps(
    model: nn.Module,
    batches: Iterator[Any],
    opt: torch.optim.Optimizer,
    lr_fn: Callable[[int], float],
    autocast: Callable[[], Any],
) -> Callable[[int], int]:
    """`run(k)`: k of our training steps (`train_one_epoch`, as in `odearch train`) on the next k batches."""
    step = TrainStep(opt, lr_fn, autocast)
    return lambda k: train_one_epoch(model, itertools.islice(batches, k), step, step=0)["n"]


def infer_steps(model: nn.Module, batches: Iterator[Any], autocast: Callable[[], Any]) -> Callable[[int], int]:
    """`run(k)`: k forward passes in eval mode, without gradients, under the training autocast."""

    @torch.no_grad()
    def run(k: int) -> int:
        model.eval()
        n = 0
        for x, _ in itertools.islice(batches, k):
            with autocast():
                model(x)
            n += len(x)
        return n

    return run


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_s(run: Callable[[int], int], steps: int, device: torch.device, lead_in: int = 0) -> float:
    """Runs `lead_in` untimed steps, then times `steps` steps; `run(k)` does k steps and returns the image count."""
    if lead_in:
        run(lead_in)
    sync(device)
    t0 = time.perf_counter()
    n = run(steps)
    sync(device)
    return n / (time.perf_counter() - t0)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--models",
        nargs="+",
        help=f"models to measure (default: {' '.join(DEFAULT_MODELS)}; with only --pairs: the pairs' members)",
    )
    p.add_argument(
        "--pairs",
        nargs="+",
        metavar="PLAIN:LM",
        help="LM / plain ratios to report (default: every lm_X measured with preact_X, else X, measured too)",
    )
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--steps", type=int, help="steps per timed window (default: 20 on CPU, 200 on CUDA)")
    p.add_argument("--repeats", type=int, default=5, help="timed windows per model and pipeline")
    p.add_argument("--warmup", type=int, help="untimed steps per model and pipeline first (default: 5 CPU, 20 CUDA)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes of the reference pipeline")
    p.add_argument("--compile", action="store_true", help="torch.compile the models (as `odearch train --compile`)")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="folder holding cifar-10-batches-py/ (default: "
        "$ODEARCH_DATA, else ../shared/data beside the repository, else ./data)",
    )
    p.add_argument("--out", type=Path, default=REPO / "results" / "bench", help="folder of the JSON record")
    args = p.parse_args()
    steps_ok = args.steps is None or args.steps >= 1
    if not steps_ok or min(args.repeats, args.batch_size) < 1 or min(args.workers, args.warmup or 0) < 0:
        p.error("--steps, --repeats and --batch-size must be positive; --warmup and --workers non-negative")
    pairs = [tuple(s.split(":")) for s in args.pairs or []]
    if any(len(pair) != 2 for pair in pairs):
        p.error("--pairs takes PLAIN:LM items, e.g. preact_resnet20:lm_resnet20")
    models = args.models or ([] if pairs else DEFAULT_MODELS)
    args.models = list(dict.fromkeys([*models, *itertools.chain(*pairs)]))
    args.pairs = pairs or [(plain, lm) for lm in args.models if (plain := plain_twin(lm, args.models))]
    return args


def plain_twin(lm: str, models: list[str]) -> str | None:
    """The plain model among `models` that LM model `lm` (lm_X) is the twin of: preact_X, else X."""
    if lm.startswith("lm_"):
        for plain in (f"preact_{lm[3:]}", lm[3:]):
            if plain in models:
                return plain
    return None


def main() -> None:
    args = parse_args()
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    steps = args.steps if args.steps is not None else (200 if cuda else 20)
    warmup = args.warmup if args.warmup is not None else (20 if cuda else 5)
    data_dir = args.data_dir or default_data_dir()
    info = dataset_info("cifar10")
    dtype = amp_dtype("auto", device)
    autocast = lambda: torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)  # noqa: E731

    # Our pipeline: the whole set on the device, augmented there per batch (as `odearch train` builds it).
    common = {"mean": info["mean"], "std": info["std"], "device": device, "channels_last": True}
    train_set = load_cifar(data_dir, train=True, download=False)
    ours = CifarLoader(*train_set, args.batch_size, train=True, **common)
    test = CifarLoader(
        *load_cifar(data_dir, train=False, download=False), args.batch_size, train=False, drop_last=True, **common
    )
    ours_batches, test_batches = endless(ours), endless(test)
    # The reference pipeline, shared by all models (one set of worker processes).
    tf = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(info["mean"], info["std"]),
        ]
    )
    reference = DataLoader(
        TorchvisionCIFAR10(*train_set, transform=tf),
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        pin_memory=cuda,
        persistent_workers=args.workers > 0,
        drop_last=True,
        generator=torch.Generator().manual_seed(0),
    )
    ref_batches = to_device(endless(reference), device)
    lead_in = 2 * args.workers  # default prefetch_factor (2) batches per worker, prefetched between windows

    jobs: dict[tuple[str, str], tuple[Callable[[int], int], int]] = {}
    params = {}
    for name in args.models:
        cfg = TrainConfig(
            model=name, device=args.device, batch_size=args.batch_size, compile=args.compile, data_dir=str(data_dir)
        )
        configure_numerics(cfg, device)
        torch.manual_seed(cfg.seed)
        raw = build_model(cfg).to(device, memory_format=torch.channels_last)
        params[name] = sum(p.numel() for p in raw.parameters())
        opt = torch.optim.SGD(
            raw.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay
        )
        model, eval_model = (torch.compile(raw), torch.compile(raw)) if cfg.compile else (raw, raw)
        lr_fn = lr_schedule(cfg, len(ours))

        jobs[name, "train"] = train_steps(model, ours_batches, opt, lr_fn, autocast), 0
        jobs[name, "reference"] = train_steps(model, ref_batches, opt, lr_fn, autocast), lead_in
        jobs[name, "infer"] = infer_steps(eval_model, test_batches, autocast), 0

    threads = torch.get_num_threads()
    prov = provenance(device)
    print(
        f"{prov['device_name']} ({device}), {threads} threads, batch {args.batch_size}, warm-up {warmup}, "
        f"{args.repeats} x {steps} steps, {args.workers} reference workers{', compiled' if args.compile else ''}"
    )
    t_start = time.perf_counter()
    for run, _ in jobs.values():
        run(warmup)
    samples: dict[tuple[str, str], list[float]] = {key: [] for key in jobs}
    for _ in range(args.repeats):
        for key, (run, lead) in jobs.items():
            samples[key].append(images_per_s(run, steps, device, lead))
    med = {key: statistics.median(v) for key, v in samples.items()}

    ref_target = REF_TARGET[device.type]
    rows = {}
    print(
        f"\n{'model':22s} {'params':>7s} {'train img/s':>11s} {'reference':>10s} {'ours/ref':>8s} {'infer img/s':>11s}"
    )
    for name in args.models:
        ratio = med[name, "train"] / med[name, "reference"]
        rows[name] = {
            "params": params[name],
            "ours_over_reference": ratio,
            "pass": ratio >= ref_target,
            **{k: {"median": med[name, k], "samples": samples[name, k]} for k in KINDS},
        }
        print(
            f"{name:22s} {params[name] / 1e6:6.3f}M {med[name, 'train']:11.1f} {med[name, 'reference']:10.1f} "
            f"{ratio:8.2f} {med[name, 'infer']:11.1f}"
        )
    pairs = []
    for plain, lm in args.pairs:
        train_r, infer_r = (med[lm, k] / med[plain, k] for k in ("train", "infer"))
        pairs.append(
            {"plain": plain, "lm": lm, "train_ratio": train_r, "infer_ratio": infer_r, "pass": train_r >= LM_TARGET}
        )
        print(
            f"{lm} / {plain}: train {train_r:.3f} ({'PASS' if train_r >= LM_TARGET else 'FAIL'} >= {LM_TARGET}), "
            f"infer {infer_r:.3f}"
        )
    ok_ref, ok_lm = all(r["pass"] for r in rows.values()), all(p["pass"] for p in pairs)
    print(
        f"ours / reference >= {ref_target} on {device.type}: {'PASS' if ok_ref else 'FAIL'} "
        f"(min {min(r['ours_over_reference'] for r in rows.values()):.2f})"
    )
    seconds = time.perf_counter() - t_start

    now = datetime.now()
    record = {
        "benchmark": "throughput",
        "command": shlex.join([sys.executable, *sys.argv]),
        "date": now.astimezone().isoformat(timespec="seconds"),
        "provenance": {**prov, "cpu_count": os.cpu_count(), "threads": threads},
        "settings": {
            "batch_size": args.batch_size,
            "steps": steps,
            "repeats": args.repeats,
            "warmup": warmup,
            "workers": args.workers,
            "reference_lead_in": lead_in,
            "compile": args.compile,
            "amp": str(dtype) if dtype else None,
            "channels_last": True,
            "data_dir": str(data_dir),
            "seconds": seconds,
            "optimizer": f"SGD lr {cfg.lr} momentum {cfg.momentum} nesterov {cfg.nesterov} wd {cfg.weight_decay}",
        },
        "targets": {"lm_over_plain_train": LM_TARGET, "ours_over_reference": ref_target},
        "models": rows,
        "pairs": pairs,
        "pass": {"lm_over_plain_train": ok_lm, "ours_over_reference": ok_ref, "all": ok_lm and ok_ref},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"throughput-{device.type}-{now:%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"{seconds:.0f}s; wrote {path}")


if __name__ == "__main__":
    main()
