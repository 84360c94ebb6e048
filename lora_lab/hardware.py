"""The hardware a run meets: the device, the precision and dropout masks that suit it, its GPU, peak memory.

Resolved once per run (recipe.settle), before the run's identity is taken; the training loop reads the result.
"""

from __future__ import annotations

import ctypes
import resource
import warnings
from pathlib import Path

import torch

from lora_lab.config import PRECISIONS, require
from lora_lab.schema import Gpu

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}  # what autocast computes in
CHEAP_DROPOUT = ("auto", True, False)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"trainer.device={name}, but no CUDA device is visible; use trainer.device=cpu")
    return torch.device(name)


def pick_precision(name: str, device: torch.device) -> str:
    """trainer.precision resolved to bf16, fp16 or fp32. auto: bf16 where the hardware multiplies bf16
    natively (GPUs of compute capability 8.0 and up; CPUs with AVX512-BF16 or AMX); fp16 with a gradient
    scaler on older GPUs (a T4 or V100 only emulates bf16, slowly); fp32 on other CPUs, where emulated bf16 is
    far slower. torch's own bf16 query counts emulation unless told not to."""
    require(name in PRECISIONS, "trainer.precision", name, f"one of {PRECISIONS}")
    native = (
        torch.cuda.is_bf16_supported(including_emulation=False)
        if device.type == "cuda"
        else torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    )
    if name == "bf16" and device.type == "cpu" and not native:
        warnings.warn(  # once per process, not once per run of a sweep
            "trainer.precision=bf16: this CPU has no AVX512-BF16 or AMX, so bf16 is emulated and far slower "
            "than fp32; trainer.precision=fp32 (or auto) runs faster here",
            stacklevel=2,
        )
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if native else "fp16"
    return "bf16" if native else "fp32"


def pick_cheap_dropout(setting: str | bool, device: torch.device) -> bool:
    """trainer.cheap_dropout resolved: auto draws `lora_lab.dropout` masks on the CPU only, where they were
    measured faster (README, Performance); on CUDA the fused kernels keep their own dropout."""
    require(setting in CHEAP_DROPOUT, "trainer.cheap_dropout", setting, "auto, true or false")
    return device.type == "cpu" if setting == "auto" else bool(setting)


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """bf16 or fp16 autocast (matmuls in that dtype; weights, gradients and optimizer state stay fp32), or a
    no-op for fp32."""
    return torch.autocast(device.type, dtype=DTYPES[precision], enabled=precision != "fp32")


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """fp16's loss scaling (its gradients would underflow unscaled); a pass-through for bf16 and fp32."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def gpu_of(device: torch.device) -> Gpu | None:
    """Which GPU a run used: name, compute capability, memory, and the CUDA and driver versions."""
    if device.type != "cuda":
        return None
    props = torch.cuda.get_device_properties(device)
    driver = Path("/proc/driver/nvidia/version")  # Linux NVIDIA hosts; torch does not report the driver
    return {
        "name": props.name,
        "capability": f"{props.major}.{props.minor}",
        "memory_gb": round(props.total_memory / 2**30, 1),
        "cuda": torch.version.cuda,
        "driver": driver.read_text().splitlines()[0] if driver.is_file() else None,
    }


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak, so that each run of a multirun sweep reports its own."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # Linux: "5" resets the process's peak resident set (VmHWM)
        # First hand freed memory back to the OS (glibc keeps it otherwise), or the new peak would start
        # from whatever loading left behind, e.g. the full-precision weights a 4-bit base replaced.
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # elsewhere the peak covers the whole process


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: peak allocated by tensors. CPU: peak resident set since reset_peak_memory (Linux), else of
    the whole process."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_reserved_mb(device: torch.device) -> float | None:
    """CUDA: the most the caching allocator held since reset_peak_memory (allocated plus its cache: what the
    GPU had to have free). None elsewhere: a CPU process's peak is its resident set, peak_memory_mb."""
    return torch.cuda.max_memory_reserved(device) / 2**20 if device.type == "cuda" else None
