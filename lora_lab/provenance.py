"""Where a number came from: library versions, the git commit and dirty flag, Python, and the machine kind.
Every run record and bench JSON carries it."""

from __future__ import annotations

import os
import platform
import subprocess
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

LIBRARIES = ("torch", "transformers", "peft", "datasets", "hydra-core", "bitsandbytes")


@cache
def current() -> dict:
    """Library versions, git commit and machine, so a number can be traced to the code that made it.

    Read once per process (run.py asks before the first job): a sweep runs the code it imported, even if the
    checkout changes while it runs."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                cwd=Path(__file__).resolve().parent,
            ).stdout.strip()
        )
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = None, None
    return {
        "versions": {lib: _version(lib) for lib in LIBRARIES},
        "git_commit": commit,
        "git_dirty": dirty,
        "python": platform.python_version(),
        "machine": ", ".join(
            part
            for part in (platform.machine(), cpu_model(), f"{os.cpu_count()} cpus", f"{_cpu_bf16()} bf16")
            if part
        ),
    }


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """The CPU's model name (Linux), so that two hosts alike in cores and bf16 support (an Intel Xeon and an
    AMD EPYC, say) are not one machine kind when the analysis compares costs on one host."""
    try:
        lines = cpuinfo.read_text().splitlines()
    except OSError:
        return None
    names = [line.partition(":")[2].strip() for line in lines if line.startswith("model name")]
    return names[0] if names and names[0] else None


def _version(library: str) -> str | None:
    """The installed version, or None for an optional library that is not installed (bitsandbytes)."""
    try:
        return version(library)
    except PackageNotFoundError:
        return None


def _cpu_bf16() -> str:
    """Whether this CPU multiplies bf16 natively: it decides precision=auto and the speed of a run."""
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return "native" if native else "no native"
