"""lora_lab.allocator: freed activations stay in the process instead of being faulted in again each step."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Two 12 MiB tensors made and freed, over and over (the shape of a step's activations), and the minor page
# faults that costs after a warm-up. A fault maps one 4 KiB page: one pass faulting fresh memory is 6,144.
# glibc's threshold moves with the history of a process (one and the same script faulted 0 or 122,000
# times), so both sides start from its initial, fixed 128 KiB, where every such block is mapped afresh.
LOOP = """
import ctypes, ctypes.util, resource, sys, torch
from lora_lab.allocator import M_MMAP_THRESHOLD, keep_freed_memory
ctypes.CDLL(ctypes.util.find_library("c")).mallopt(M_MMAP_THRESHOLD, 128 << 10)
tuned = keep_freed_memory() if sys.argv[1] == "tuned" else False
torch.set_num_threads(1)
x = torch.randn(2048, 1536)
def step():
    y = x * 2
    z = y + 1
    del y, z
for _ in range(5):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
PASS_PAGES = 2 * 2048 * 1536 * 4 // 4096


def faults(mode: str) -> tuple[str, int]:
    env = {"PATH": "/usr/bin:/bin"}  # no MALLOC_* variables: those would leave glibc as the user set it
    out = subprocess.run(
        [sys.executable, "-c", LOOP, mode], capture_output=True, text=True, check=True, env=env
    ).stdout.split()
    return out[0], int(out[1])


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_freed_memory_is_reused_without_faults():
    applied, tuned = faults("tuned")
    assert applied == "True"
    # twenty passes fault less than two fresh passes would (one was seen faulted in again, 6,144 faults, in a
    # suite on a loaded host); without the setting they fault more than ten
    assert tuned < 2 * PASS_PAGES
    _, default = faults("default")
    assert default > 10 * PASS_PAGES  # what is fixed: each pass faults its blocks in again


def test_malloc_environment_is_left_alone(monkeypatch):
    from lora_lab.allocator import keep_freed_memory

    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    assert keep_freed_memory() is False
