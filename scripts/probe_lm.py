"""Probes of trained nets (issue 31, ``odearch.analysis.probes``), one JSON per net under ``results/probes/``.

    python scripts/probe_lm.py lm_resnet20.cifar10_s0 --data-dir ../shared/data            # shipped weights by name
    python scripts/probe_lm.py results/campaign/lm_resnet20_bf16_s1 --data-dir ../shared/data  # a run's final weights
    python scripts/probe_lm.py preact_resnet20.cifar10_s0 --only precision                  # a plain net: precision

For an LM net: the force balance of each k_n (mean dL/dk over one augmented training epoch against the weight-decay
term), the test error with each k_n and all of them set to 0 (BatchNorm recalibrated on 2,000 training images), and
the test error in fp32 and under bf16 autocast; for a plain net the last only. The JSON holds the command, commit,
CPU, torch version, seed (of the probe's augmentation) and wall time beside the numbers.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
PROBES = ("forces", "ablation", "precision")


def load_net(source: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model with the final weights of ``source`` (a shipped name or a run directory) and its recipe."""
    from odearch import create_model
    from odearch.models import read_registry, shipped_run_weights
    from odearch.train import load_weights

    path = Path(source)
    if not path.exists():
        entry = read_registry().get(source)
        if entry is None:
            raise SystemExit(
                f"probe_lm: error: {source} is neither a run directory nor shipped weights "
                f"(known: {', '.join(read_registry())})"
            )
        model = create_model(source, pretrained=True)
        run_cfg = REPO / str(entry.get("run", "-")) / "config.yaml"
        cfg = yaml.safe_load(run_cfg.read_text()) if run_cfg.is_file() else {**entry["recipe"], "model": entry["model"]}
        return model, {"source": source, "weights_sha256": entry["sha256"], **_recipe(cfg)}
    cfg = yaml.safe_load((path / "config.yaml").read_text())
    ckpt = path / "checkpoints" / "last.safetensors"
    ckpt = ckpt if ckpt.is_file() else shipped_run_weights(path)
    if ckpt is None:
        raise SystemExit(f"probe_lm: error: {path}: no checkpoints/last.safetensors and no shipped copy")
    state, _ = load_weights(ckpt)
    model = create_model(
        cfg["model"], num_classes=cfg.get("num_classes"), scheme=cfg.get("scheme"), **(cfg.get("model_kwargs") or {})
    )
    model.load_state_dict(state)
    return model, {"source": str(path), "weights": str(ckpt), **_recipe(cfg)}


def _recipe(cfg: dict[str, Any]) -> dict[str, Any]:
    decay = cfg.get("lm_weight_decay", "k") if str(cfg["model"]).startswith("lm_") else None
    return {
        "model": cfg["model"],
        "dataset": cfg.get("dataset", "cifar10"),
        "train_seed": cfg.get("seed"),
        "amp": cfg.get("amp"),
        "lm_weight_decay": decay,
        "weight_decay": float(cfg.get("weight_decay", 1e-4)),
        "batch_size": int(cfg.get("batch_size", 128)),
    }


def probe(source: str, data_dir: str | None, only: list[str], calib: int, seed: int) -> dict[str, Any]:
    """Every probe of ``only`` on ``source``; the LM probes are skipped for a net without LM coefficients."""
    from odearch.analysis import probes
    from odearch.data.cifar import load_cifar
    from odearch.train.optim import lm_parameters

    model, info = load_net(source)
    model = model.to(memory_format=torch.channels_last).eval()
    test = load_cifar(data_dir, info["dataset"], train=False, download=False)
    out: dict[str, Any] = {"net": info}
    is_lm = bool(lm_parameters(model))
    if "forces" in only and is_lm:
        train = load_cifar(data_dir, info["dataset"], train=True, download=False)
        out["forces"] = probes.force_balance(
            model,
            *train,
            dataset=info["dataset"],
            lm_weight_decay=info["lm_weight_decay"],
            weight_decay=info["weight_decay"],
            batch_size=info["batch_size"],
            seed=seed,
        )
    if "ablation" in only and is_lm:
        train = load_cifar(data_dir, info["dataset"], train=True, download=False)
        out["ablation"] = probes.k_ablation(model, train, test, dataset=info["dataset"], calib=calib)
    if "precision" in only:
        out["precision"] = probes.precision_eval(model, test, dataset=info["dataset"])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sources", nargs="+", help="shipped weights (lm_resnet20.cifar10_s0) or run directories")
    p.add_argument("--data-dir", help="holds cifar-10-batches-py/ (default: $ODEARCH_DATA, else ./data)")
    p.add_argument("--out", type=Path, default=REPO / "results" / "probes")
    p.add_argument("--only", nargs="+", choices=PROBES, default=list(PROBES))
    p.add_argument("--calib", type=int, default=2000, help="training images that recalibrate BatchNorm (ablation)")
    p.add_argument("--seed", type=int, default=0, help="seed of the force probe's augmented epoch")
    args = p.parse_args(argv)
    from odearch.train.provenance import provenance

    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    for source in args.sources:
        t0 = time.perf_counter()
        result = probe(source, args.data_dir, args.only, args.calib, args.seed)
        record = {
            "command": shlex.join([sys.executable, *sys.argv]),
            **provenance(torch.device("cpu")),
            "seed": args.seed,
            "threads": torch.get_num_threads(),
            **result,
            "wall_seconds": time.perf_counter() - t0,
        }
        path = args.out / f"{Path(source).name}.json"
        path.write_text(json.dumps(record, indent=1) + "\n")
        print(f"probe_lm: wrote {path} ({record['wall_seconds']:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
