"""Per-op profile (torch.profiler, self CPU time per training step) of lm_resnet20 and its plain twin, fp32 and bf16.

    python benchmarks/lm_step_profile.py results/bench/lm_step-profile-cpu-<date>.json

One thread, batch 128, channels_last, one fixed random batch, SGD momentum 0.9 wd 1e-4; one untimed step, then two
profiled steps per model and precision. Writes the 25 most expensive ops of each (ms per step, calls per step) with
the command and provenance; prints the 14 most expensive.
"""

from __future__ import annotations

import json
import sys

import torch
from torch.profiler import ProfilerActivity, profile

from odearch.train import TrainConfig, build_model
from odearch.train.provenance import provenance


def main(out: str) -> None:
    torch.set_num_threads(1)
    x = torch.randn(128, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (128,))
    res = {"command": " ".join([sys.executable, *sys.argv]), "provenance": provenance(torch.device("cpu")),
           "threads": 1, "batch": 128, "steps_profiled": 2, "runs": {},
           "note": "torch.profiler self CPU time per op (ms per training step); on a shared, loaded machine the "
                   "absolute times are inflated by other processes"}  # fmt: skip
    for amp in ("off", "bf16"):
        for name in ("preact_resnet20", "lm_resnet20"):
            torch.manual_seed(0)
            m = build_model(TrainConfig(model=name)).to(memory_format=torch.channels_last)
            opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

            def step(m: torch.nn.Module = m, opt: torch.optim.Optimizer = opt, amp: str = amp) -> None:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16"):
                    loss = torch.nn.functional.cross_entropy(m(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            step()
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(2):
                    step()
            ev = {e.key: {"self_ms": e.self_cpu_time_total / 2e3, "calls": e.count // 2} for e in prof.key_averages()}
            top = sorted(ev.items(), key=lambda kv: -kv[1]["self_ms"])
            total = sum(v["self_ms"] for v in ev.values())
            res["runs"][f"{amp}/{name}"] = {"total_self_ms": total, "ops": dict(top[:25])}
            print(amp, name, round(total, 1), {k: (round(v["self_ms"], 1), v["calls"]) for k, v in top[:14]})
    with open(out, "w") as f:
        json.dump(res, f, indent=2)


if __name__ == "__main__":
    main(sys.argv[1])
