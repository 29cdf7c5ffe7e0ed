"""Fingerprints of every registered model's initial weights, to check a refactor keeps init bitwise the same.

    PYTHONPATH=src python scripts/init_fingerprint.py OUT.json [--pattern 'lm_*']   # write name -> fingerprint
    PYTHONPATH=src python scripts/init_fingerprint.py OUT.json --compare OLD.json   # and diff against OLD

For each name: ``torch.manual_seed(0)``, ``create_model(name)``, then the sha256 of the state_dict (keys, dtypes,
shapes and bytes, in order), the parameter count and the sha256 of the torch RNG state after construction (so the
random draws consumed by the constructor are pinned too). Run the same command under the old and the new code.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys

import torch


def fingerprint(name: str) -> dict[str, object]:
    """The fingerprint of ``create_model(name)`` built after ``torch.manual_seed(0)``."""
    from odearch import create_model

    torch.manual_seed(0)
    model = create_model(name)
    h = hashlib.sha256()
    for key, t in model.state_dict().items():
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.detach().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return {
        "state_dict": h.hexdigest(),
        "params": sum(p.numel() for p in model.parameters()),
        "rng_after": hashlib.sha256(torch.get_rng_state().numpy().tobytes()).hexdigest(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--pattern")
    parser.add_argument("--compare", help="a JSON written by this script under the old code")
    args = parser.parse_args()
    from odearch import list_models

    result = {}
    for name in list_models(args.pattern):
        result[name] = fingerprint(name)
        print(name, result[name]["params"], flush=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1, sort_keys=True)
    if not args.compare:
        return 0
    with open(args.compare) as f:
        old = json.load(f)
    if args.pattern:
        from fnmatch import fnmatch

        old = {k: v for k, v in old.items() if fnmatch(k, args.pattern)}
    bad = sorted(set(old) ^ set(result)) + [k for k in sorted(set(old) & set(result)) if old[k] != result[k]]
    print(f"{len(result)} models, {len(bad)} differ: {bad}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
