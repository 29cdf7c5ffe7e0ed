"""The ``odearch`` command line: the only reader of argv.

    odearch train --model lm_resnet20 --dataset cifar10 [--epochs N] [--seed S] [--out runs/NAME]
    odearch train --config configs/cifar10/lm_resnet56.yaml [--epochs 2 ...]   # YAML sets defaults, flags override
    odearch train --resume runs/NAME                                            # continue exactly where it stopped
    odearch train --nproc 8 --config configs/imagenet/lm_resnet50.yaml --sync-bn  # 8 local processes via torchrun
    odearch eval runs/NAME | CHECKPOINT.safetensors                            # test loss, accuracy, per class
    odearch models [--markdown]                                                 # the registry with parameter counts
    odearch analyze RUN_OR_CHECKPOINT [...] [--out DIR]                         # learned k_n: table, stability, plots
    odearch report RESULTS_DIR [...] [--out docs/results.md]                    # results table + learning curves
    odearch ship RUN                                                            # ship a finished run's weights

Every ``TrainConfig`` field is a flag (``--weight-decay``) and a YAML key (``weight_decay``); the flags are generated
from the dataclass, so the two cannot drift apart. Errors are one line, ``odearch: error: ...``, with exit code 2
for usage and configuration errors, 1 for failures while running.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pickle
import shlex
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import yaml

__all__ = ["build_parser", "main"]


def __getattr__(name: str) -> Any:
    """``model_table`` and ``models_markdown`` (re-exported for old imports), imported on first use: they need torch."""
    if name in ("model_table", "models_markdown"):
        from .models import table

        return getattr(table, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# What `--resume` may change: how and where the run continues, never what it computes (except extending epochs).
RESUME_OVERRIDES = (
    "epochs",
    "max_minutes",
    "data_dir",
    "download",
    "log_every",
    "tensorboard",
    "device",
    "workers",
    "memory",
    "dist_timeout",
)


class UsageError(Exception):
    """Bad command-line usage (exit code 2)."""


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line and an exception, not usage text and sys.exit."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


# ------------------------------------------------------------------------------------------------------- parser
def _add_config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, default None so that only flags actually given override the YAML."""
    from .train import TrainConfig

    types = {"int": int, "float": float, "str": str}
    for f in dataclasses.fields(TrainConfig):
        if f.name == "model_kwargs":
            continue
        ann = str(f.type).removesuffix(" | None")
        kw: dict[str, Any] = {"dest": f.name, "default": None, "help": f.metadata["help"]}
        if ann == "bool":
            kw["action"] = argparse.BooleanOptionalAction
        elif f.name in ("milestones", "refine_at"):
            kw |= {"type": int, "nargs": "*", "metavar": "EPOCH"}
        else:
            kw |= {"type": types[ann], "metavar": f.name.upper()}
        if f.metadata.get("choices"):
            kw |= {"choices": f.metadata["choices"], "metavar": None}
        p.add_argument("--" + f.name.replace("_", "-"), **kw)


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    """The model keywords: ``--model-kw KEY=VALUE`` and one flag per :data:`odearch.models.MODEL_OPTIONS` entry, all
    into the config's ``model_kwargs`` (only when given); each flag's help names the models that take it."""
    from .models import MODEL_OPTIONS, option_help

    m = p.add_argument_group("model keywords (passed only when given; YAML: model_kwargs)")
    m.add_argument(
        "--model-kw",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any model keyword, VALUE parsed as YAML (repeatable)",
    )
    for name, spec in MODEL_OPTIONS.items():
        kw = {k: v for k, v in spec.items() if k != "help"}
        if kw.get("type") is bool:
            kw = {"action": argparse.BooleanOptionalAction}
        m.add_argument("--" + name.replace("_", "-"), dest=f"mk_{name}", default=None, help=option_help(name), **kw)


def _add_models_arguments(ls: argparse.ArgumentParser) -> None:
    ls.add_argument("--markdown", action="store_true", help="a Markdown table (for docs/models.md)")
    ls.add_argument("--pattern", help="shell-style filter, e.g. 'lm_*'")


def _add_eval_arguments(e: argparse.ArgumentParser) -> None:
    """The flags of ``odearch eval`` (``--dataset`` choices: the data set table)."""
    from .data import DATASETS

    e.add_argument(
        "target",
        help="a run directory, a .safetensors checkpoint, or the name of shipped weights "
        "(lm_resnet20.cifar10_s0, or lm_resnet20 for its first)",
    )
    e.add_argument("--checkpoint", choices=("last", "best"), default="last", help="which checkpoint of a run")
    e.add_argument("--model", help="model of a bare weights file without odearch metadata (e.g. lm_resnet20)")
    e.add_argument("--dataset", choices=tuple(DATASETS), help="data set of a bare weights file (default: cifar10)")
    e.add_argument("--data-dir", help="directory holding the data set (default: $ODEARCH_DATA, else the run's)")
    e.add_argument("--download", action=argparse.BooleanOptionalAction, default=None, help="download if missing")
    e.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    e.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), default="auto")
    e.add_argument("--batch-size", type=int, default=1000)
    e.add_argument("--subset", type=int, help="evaluate on the first N test images")
    e.add_argument(
        "--json",
        metavar="FILE",
        help="write the results as JSON to FILE ('-': stdout, the table going "
        "to stderr; default: RUN/eval_<checkpoint>.json for a run, none "
        "for a checkpoint file or shipped weights)",
    )


def _add_train_arguments(t: argparse.ArgumentParser) -> None:
    """The flags of ``odearch train``: its own, then one per config field and model keyword."""
    t.add_argument("--config", help="YAML file of TrainConfig keys (flags given here override it)")
    t.add_argument("--resume", metavar="RUN", help="continue the run in RUN from its last checkpoint")
    t.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    t.add_argument(
        "--nproc",
        type=int,
        metavar="N",
        help="train in N processes on this machine (re-launches itself under torchrun; --batch-size stays global)",
    )
    _add_config_flags(t)
    _add_model_flags(t)


def _add_convert_arguments(c: argparse.ArgumentParser) -> None:
    c.add_argument("source", choices=("akamaster",), help="its layout: akamaster = pytorch_resnet_cifar10 .th files")
    c.add_argument("input", help="the checkpoint, e.g. resnet20-12fca82f.th")
    c.add_argument("output", help="the .safetensors file to write (odearch eval can read it)")
    c.add_argument("--model", help="odearch model name (default: from the checkpoint's depth, e.g. resnet20)")
    c.add_argument("--dataset", choices=("cifar10", "cifar100"), help="default: from the number of classes")


def _add_analyze_arguments(a: argparse.ArgumentParser) -> None:
    from .analysis.command import add_analyze_arguments

    add_analyze_arguments(a)


def _add_report_arguments(r: argparse.ArgumentParser) -> None:
    from .report import add_report_arguments

    add_report_arguments(r)


def _add_ship_arguments(s: argparse.ArgumentParser) -> None:
    from .train.ship import add_ship_arguments

    add_ship_arguments(s)


# Each subcommand: its help line and the function adding its arguments (imported only for the command given).
SUBCOMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {
    "train": ("train a model (YAML config, then flags)", _add_train_arguments),
    "eval": ("test loss and accuracy (overall and per class) of a run or checkpoint", _add_eval_arguments),
    "models": ("registered models with parameter counts", _add_models_arguments),
    "convert": ("convert a checkpoint of another code base to odearch safetensors", _add_convert_arguments),
    "analyze": ("per-block k_n table, zero-stability and plots of trained LM runs", _add_analyze_arguments),
    "report": ("generate docs/results.md and learning curves from runs", _add_report_arguments),
    "ship": ("ship a finished run's final weights inside the package", _add_ship_arguments),
}


def build_parser(commands: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser of every subcommand; with ``commands``, only those get their arguments (the others are listed by
    name and help line: ``odearch --help`` imports neither torch nor the training code)."""
    parser = _Parser(
        prog="odearch",
        description="LM-ResNet and friends: train, evaluate, list and analyze models.",
        allow_abbrev=False,
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"odearch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, (help_line, add_arguments) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_line, allow_abbrev=False)
        if commands is None or name in commands:
            add_arguments(p)
    return parser


# ------------------------------------------------------------------------------------------------------ train
def _parse_model_kw(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise UsageError(f"--model-kw expects KEY=VALUE with an identifier KEY, got {item!r}")
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise UsageError(f"--model-kw {key}: cannot parse {value!r} as YAML") from None
    return out


def _config_from_args(args: argparse.Namespace) -> tuple[Any, bool]:
    """Resolves (TrainConfig, resume) from --config YAML, then flags, or from the run dir with --resume."""
    from .models import MODEL_OPTIONS
    from .train import RunDir, TrainConfig, load_yaml
    from .train.config import ConfigError
    from .train.rundir import resolve_data_dir

    fields = [f.name for f in dataclasses.fields(TrainConfig) if f.name != "model_kwargs"]
    flags = {k: getattr(args, k) for k in fields if getattr(args, k) is not None}
    model_kw = _parse_model_kw(args.model_kw)
    model_kw |= {k: getattr(args, f"mk_{k}") for k in MODEL_OPTIONS if getattr(args, f"mk_{k}") is not None}
    if args.resume:
        changed = sorted(set(flags) - set(RESUME_OVERRIDES) - {"out"})
        if args.config or changed or model_kw or args.overwrite:
            extra = (["--config"] if args.config else []) + [f"--{k.replace('_', '-')}" for k in changed]
            extra += (["model keywords"] if model_kw else []) + (["--overwrite"] if args.overwrite else [])
            allowed = ", ".join("--" + k.replace("_", "-") for k in RESUME_OVERRIDES)
            raise UsageError(
                f"--resume takes its config from RUN/config.yaml; it cannot change {', '.join(extra)} "
                f"(allowed: {allowed})"
            )
        if "out" in flags and Path(flags["out"]) != Path(args.resume):
            raise UsageError("--out and --resume name different directories; --resume RUN continues RUN in place")
        cfg = RunDir(Path(args.resume)).read_config()
        data_dir = resolve_data_dir(cfg.data_dir, Path(args.resume), flags.pop("data_dir", None))
        return cfg.replace(**flags, data_dir=data_dir, out=str(args.resume)), True
    values: dict[str, Any] = load_yaml(args.config) if args.config else {}
    source = args.config
    if not isinstance(values.get("model_kwargs", {}), dict | None):
        raise ConfigError(f"{source}: model_kwargs must be a mapping")
    values["model_kwargs"] = {**(values.get("model_kwargs") or {}), **model_kw}
    values.update(flags)
    cfg = TrainConfig.from_dict(values, source=source)
    late = [m for m in cfg.milestones if m >= cfg.epochs] if "milestones" in flags else []
    if late:  # a milestone m divides the lr from epoch m + 1 on (a YAML recipe shortened by --epochs keeps its own)
        raise UsageError(
            f"--milestones {' '.join(map(str, late))} not below the {cfg.epochs} epochs: the lr would "
            "never drop there; give milestones below --epochs"
        )
    return cfg, False


def _cmd_train(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .train import fit
    from .train.rundir import default_out

    cfg, resume = _config_from_args(args)
    if cfg.out is None:
        cfg = cfg.replace(out=default_out(cfg))
    if args.nproc is not None and args.nproc != 1:
        from .train.distributed import relaunch

        rest = argv[argv.index("train") + 1 :] + (["--out", cfg.out] if not resume and args.out is None else [])
        return relaunch(args.nproc, rest, cfg.batch_size)
    if not resume:
        cfg = cfg.replace(data_dir=str(Path(cfg.data_dir).absolute()))  # the run's record works from any folder
    result = fit(cfg, resume=resume, overwrite=args.overwrite, command=shlex.join(["odearch", *argv]))
    if result.get("status") == "stopped" and result.get("stop_reason") in ("SIGTERM", "SIGINT"):
        return 128 + int(getattr(signal, result["stop_reason"]))  # the shell's convention for a signal
    return 0 if result.get("status") in ("complete", "stopped", None) else 1


# ------------------------------------------------------------------------------------------------------- eval
def _run_checkpoint(run: Any, which: str) -> Path:
    """RUN's ``which`` checkpoint; ``last`` falls back to ``best`` when a run has only that (as analyze does), and
    to the package's copy of the final weights when ``odearch ship --prune-checkpoints`` deleted the checkpoints."""
    ckpt = run.checkpoints / f"{which}.safetensors"
    if run.shipped.is_file():  # pruned, or a prune cut short (what is left of checkpoints/ is being deleted)
        return _shipped_checkpoint(run, which)
    if which == "last" and not ckpt.exists() and run.best_weights.exists():
        print(f"odearch: {run.root} has no last checkpoint; evaluating {run.best_weights}", file=sys.stderr)
        return run.best_weights
    return ckpt


def _shipped_checkpoint(run: Any, which: str) -> Path:
    """The shipped file holding a pruned run's final weights (checked against the sha256 its shipped.json records)."""
    from .models import shipped_run_weights
    from .train.checkpoint import CheckpointError

    path = shipped_run_weights(run.root)
    assert path is not None  # the caller saw shipped.json
    if which != "last":
        raise CheckpointError(
            f"the checkpoints of {run.root} were pruned after shipping ({run.shipped}); only the "
            f"final weights remain, as {path.name}: evaluate --checkpoint last, or restore the rest "
            f"from the repository history (git log -- {run.checkpoints})"
        )
    print(f"odearch: {run.root} was pruned after shipping; evaluating its final weights {path}", file=sys.stderr)
    return path


def _shipped_or_path(target: str) -> Path:
    """``target`` as a path, or, when no such file or folder exists, as the name of weights shipped in the package
    (``lm_resnet20.cifar10_s0``, or ``lm_resnet20`` for its first): that file, its sha256 checked."""
    from .models import list_pretrained, shipped_weights_named

    path = Path(target)
    if path.exists():
        return path
    shipped = shipped_weights_named(target)
    if shipped is None:
        raise FileNotFoundError(
            f"{target}: no such run directory or checkpoint file, nor the name of shipped weights "
            f"({', '.join(list_pretrained()) or 'none shipped'})"
        )
    return shipped


def _eval_target(args: argparse.Namespace) -> tuple[Any, Path, Path | None, dict[str, Any], dict[str, Any]]:
    """(config, checkpoint, default JSON path, tensors, metadata) of ``odearch eval TARGET``: a run directory, an
    odearch checkpoint, or a bare weights file with ``--model``; the data directory is resolved (--data-dir, then
    $ODEARCH_DATA, then the run's record)."""
    from .packing import weights_stem
    from .train import RunDir, TrainConfig, load_weights
    from .train.checkpoint import CheckpointError
    from .train.rundir import resolve_data_dir

    target = _shipped_or_path(args.target)
    if target.is_dir():
        run = RunDir(target)
        cfg = run.read_config()
        for flag, given, own in (("--model", args.model, cfg.model), ("--dataset", args.dataset, cfg.dataset)):
            if given is not None and given != own:
                raise UsageError(
                    f"{flag} {given}: {run.root} is a run of {cfg.model} on {cfg.dataset}, and a run is "
                    f"evaluated as what it trained; drop {flag}"
                )
        ckpt = _run_checkpoint(run, args.checkpoint)
        json_default: Path | None = run.root / f"eval_{weights_stem(ckpt)}.json"
        tensors, meta = load_weights(ckpt)
        if meta.get("model", cfg.model) != cfg.model:
            raise CheckpointError(
                f"{ckpt} holds weights of model {meta['model']!r} (its metadata), but {run.root} "
                f"is a run of {cfg.model!r}; refusing to evaluate them as that"
            )
        cfg = cfg.replace(data_dir=resolve_data_dir(cfg.data_dir, run.root, args.data_dir))
    elif target.is_file():
        ckpt, json_default = target, None
        tensors, meta = load_weights(ckpt)
        cfg = TrainConfig.from_dict(
            {**_file_model(args, ckpt, meta), "data_dir": resolve_data_dir(None, ckpt.parent, args.data_dir)},
            source=str(ckpt),
        )
    else:
        raise FileNotFoundError(f"{target}: no such run directory or checkpoint file")
    return cfg, ckpt, json_default, tensors, meta


def _file_model(args: argparse.Namespace, ckpt: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """The model, classes, data set, scheme and options of a weights file: its odearch metadata, or, for a bare file
    without it, ``--model`` (and ``--dataset``). Flags that contradict the metadata are refused, naming what it is."""
    from .train.checkpoint import CheckpointError

    if "model" in meta:
        if args.model is not None and args.model != meta["model"]:
            raise UsageError(
                f"--model {args.model}: {ckpt} holds weights of model {meta['model']!r} (its metadata); "
                "--model only names the model of a bare weights file without it: drop --model"
            )
        if args.dataset is not None and meta.get("dataset", args.dataset) != args.dataset:
            raise UsageError(
                f"--dataset {args.dataset}: {ckpt} holds {meta['model']} weights trained on "
                f"{meta['dataset']} (its metadata); drop --dataset"
            )
        if args.dataset is not None and "dataset" not in meta:
            meta = {k: v for k, v in meta.items() if k != "num_classes"} | {"dataset": args.dataset}
    elif args.model:  # a bare weights file: the flags say what it is
        meta = {**meta, "model": args.model} | ({"dataset": args.dataset} if args.dataset else {})
    else:
        raise CheckpointError(
            f"{ckpt} has no odearch metadata (model name): give --model NAME (and --dataset), "
            "or evaluate its run directory"
        )
    return {
        k: meta[k] for k in ("model", "num_classes", "dataset", "scheme", "model_kwargs", "refine_factor") if k in meta
    }


def _cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from .data import make_test_loader
    from .train import build_model, evaluate, generations, resolve_device
    from .train.checkpoint import weights_into
    from .train.numerics import amp_dtype, autocast

    cfg, ckpt, json_default, tensors, meta = _eval_target(args)
    if args.batch_size < 1 or (args.subset is not None and args.subset < 1):
        raise UsageError("--batch-size and --subset must be positive")
    device = resolve_device(args.device)
    model = build_model(cfg, int(meta.get("mesh_level", 0)))  # a multi-level run's weights: the refined model
    weights_into(model, tensors, meta, ckpt, cfg.model)
    generations.read_verified(ckpt)  # sha256 against the run's manifest (after the clearer model-mismatch check)
    model = model.to(device, memory_format=torch.channels_last)
    if args.download is not None:
        cfg = cfg.replace(download=args.download)
    loader, classes = make_test_loader(cfg, device, args.batch_size, args.subset)
    amp = amp_dtype(args.amp, device)
    res = evaluate(model, loader, autocast=lambda: autocast(device, amp), num_classes=cfg.num_classes)
    per_class = dict(zip(classes, res["per_class_acc"]))
    out = {
        "checkpoint": str(ckpt),
        "model": cfg.model,
        "dataset": cfg.dataset,
        "epoch": meta.get("epoch"),
        "step": meta.get("step"),
        "test_images": res["n"],
        "test_loss": res["loss"],
        "test_acc": res["acc"],
        "test_error_pct": round(100 * (1 - res["acc"]), 10),
        "per_class_acc": per_class,
        "per_class_n": dict(zip(classes, res["per_class_n"])),
    }
    dest = args.json or (str(json_default) if json_default else None)
    print(_eval_table(out), file=sys.stderr if dest == "-" else sys.stdout)
    text = json.dumps(out, indent=2)
    if dest == "-":
        print(text)
    elif dest is not None:
        from .train.checkpoint import atomic_write

        atomic_write(dest, (text + "\n").encode())
        print(f"  JSON: {dest}")
    return 0


def _eval_table(out: dict[str, Any]) -> str:
    """The human-readable results of ``odearch eval``: rounded, one class a line (up to 20 classes)."""
    head = f"{out['model']} on {out['dataset']} test ({out['test_images']} images), {out['checkpoint']}"
    lines = [
        f"{head} (epoch {out['epoch']})",
        f"  loss {out['test_loss']:.4f}  accuracy {100 * out['test_acc']:.2f}%  error {out['test_error_pct']:.2f}%",
    ]
    if len(out["per_class_acc"]) <= 20:
        lines += [f"  {name:>12}: {100 * acc:6.2f}%" for name, acc in out["per_class_acc"].items()]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- convert
def _cmd_convert(args: argparse.Namespace) -> int:
    from .convert import load_akamaster
    from .train.checkpoint import save_weights

    model, info = load_akamaster(args.input, args.model)
    dataset = args.dataset or ("cifar100" if info["num_classes"] == 100 else "cifar10")
    meta = {
        "model": info["model"],
        "num_classes": info["num_classes"],
        "dataset": dataset,
        "scheme": None,
        "model_kwargs": {},
        "format": "odearch/1",
        "converted_from": f"akamaster:{Path(args.input).name}",
        **({"best_prec1": info["best_prec1"]} if "best_prec1" in info else {}),
    }
    save_weights(args.output, model, meta)
    print(
        f"{args.input} -> {args.output}: {info['model']} ({info['num_classes']} classes"
        + (f", their best_prec1 {info['best_prec1']:.2f}%" if "best_prec1" in info else "")
        + ")"
    )
    return 0


# ----------------------------------------------------------------------------------------------------- models
def _cmd_models(args: argparse.Namespace) -> int:
    """Print the registry (:func:`odearch.models.model_table`), or its Markdown table with ``--markdown``."""
    from .models import list_models, registry_problems
    from .models.table import model_table, models_markdown

    if args.pattern is not None and not list_models(args.pattern):
        raise UsageError(
            f"no model matches --pattern {args.pattern!r} (shell-style, e.g. 'lm_*'); odearch models lists all "
            f"{len(list_models())}"
        )
    for problem in registry_problems():  # the models are listed all the same, without the weights it cannot read
        print(f"odearch: warning: {problem}", file=sys.stderr)
    if args.markdown:
        print(models_markdown(args.pattern))
        return 0
    print(_models_text(model_table(args.pattern)))
    return 0


def _models_text(rows: list[dict[str, Any]]) -> str:
    """The model table as aligned columns, each as wide as its longest entry."""
    cells = [["model", "params (M)", "classes", "family", "scheme", "pretrained weights"]]
    for r in rows:
        weights = ", ".join(r["pretrained"]) or "-"
        cells.append([r["name"], f"{r['params'] / 1e6:.3f}", str(r["classes"]), r["family"], r["scheme"], weights])
    width = [max(len(c[i]) for c in cells) for i in range(5)]
    align = "<>><<"  # numbers to the right
    lines = ["  ".join(f"{c[i]:{align[i]}{width[i]}}" for i in range(5)) + "  " + c[5] for c in cells]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------- main
def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI; returns the exit code (0 ok, 1 failure while running, 2 usage or configuration error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        command = next((a for a in argv if not a.startswith("-")), None)  # the top level takes no option values
        args = build_parser([command] if command else []).parse_args(argv)
        if args.command == "train":
            return _cmd_train(args, argv)
        if args.command == "eval":
            return _cmd_eval(args)
        if args.command == "convert":
            return _cmd_convert(args)
        if args.command == "analyze":
            from .analysis.command import run_analyze

            return run_analyze(args)
        if args.command == "report":
            from .report import run_report

            return run_report(args, argv)
        if args.command == "ship":
            from .train.ship import run_ship

            return run_ship(args)
        return _cmd_models(args)
    except BrokenPipeError:  # `odearch models | head`: the reader left; not an error
        sys.stdout = open(os.devnull, "w")  # keeps the interpreter's final flush quiet
        return 0
    except SystemExit as e:  # --help / --version
        return e.code if isinstance(e.code, int) else 0
    except KeyboardInterrupt:
        print("odearch: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        code = _exit_code(e)
        if code is None:  # a bug: the traceback
            raise
        print(f"odearch: error: {_one_line(e)}", file=sys.stderr)
        return code


def _exit_code(e: Exception) -> int | None:
    """2 for usage and configuration errors, 1 for the failures while running that are told in one line, None for
    any other exception (a bug)."""
    if isinstance(e, UsageError):
        return 2
    from .train import CheckpointError, ConfigError, NonFiniteLossError, RunExistsError

    if isinstance(e, ConfigError):
        return 2
    failures = (
        RunExistsError,
        CheckpointError,
        NonFiniteLossError,
        FileNotFoundError,
        ValueError,
        OSError,
        pickle.UnpicklingError,
    )
    return 1 if isinstance(e, failures) else None
