"""The host allocator on CPU (``odearch.train.allocator``): freed memory stays in the process, so a training step
reuses its pages instead of faulting in fresh zeroed ones. Each case runs in its own process (mallopt is global)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from odearch.train.allocator import _glibc

ROOT = Path(__file__).resolve().parents[1]

# Minor page faults per training step of a pre-activation ResNet-20 (batch 128, one thread): the median of 10
# steps after 3 warm-up steps (a step that grows the heap faults once, the steady state is what counts);
# ``configure`` applies odearch's CPU setup (configure_numerics) first, ``system`` does not.
PROBE = """
import resource, sys, torch
torch.set_num_threads(1)
import odearch
from odearch.train import TrainConfig
from odearch.train.numerics import configure_numerics
from odearch.train.provenance import provenance
if sys.argv[1] == "configure":
    configure_numerics(TrainConfig(model="preact_resnet20"), torch.device("cpu"))
torch.manual_seed(0)
m = odearch.create_model("preact_resnet20").to(memory_format=torch.channels_last)
opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
x = torch.randn(128, 3, 32, 32).to(memory_format=torch.channels_last)
y = torch.randint(0, 10, (128,))
def step():
    loss = torch.nn.functional.cross_entropy(m(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
for _ in range(3):
    step()
faults = []
for _ in range(10):
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
print(sorted(faults)[len(faults) // 2], provenance(torch.device("cpu"))["cpu_allocator"])
"""

needs_glibc = pytest.mark.skipif(_glibc() is None, reason="mallopt tuning applies to glibc only")


def probe(mode: str, **env: str) -> tuple[float, str]:
    r = subprocess.run(
        [sys.executable, "-c", PROBE, mode],
        env={**os.environ, "PYTHONPATH": str(ROOT / "src"), **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    faults, state = r.stdout.split()
    return float(faults), state


@pytest.mark.slow
@needs_glibc
def test_training_steps_reuse_their_pages_once_configured() -> None:
    system_faults, system_state = probe("system")
    kept_faults, kept_state = probe("configure")
    assert (system_state, kept_state) == ("system", "glibc-keep-freed")
    # glibc 2.36, AMD EPYC: thousands of faults per step with the system settings, none once kept
    assert kept_faults < system_faults / 10, (system_faults, kept_faults)


@pytest.mark.slow
@needs_glibc
def test_environment_opt_out_leaves_the_allocator_alone() -> None:
    code = (
        "import torch; from odearch.train import TrainConfig;"
        " from odearch.train.numerics import configure_numerics;"
        " from odearch.train.allocator import allocator_state;"
        " configure_numerics(TrainConfig(model='resnet20'), torch.device('cpu')); print(allocator_state())"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "ODEARCH_KEEP_FREED_MEMORY": "0"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, check=True)
    assert r.stdout.split() == ["system"]
