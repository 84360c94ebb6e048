"""Crash-safe file writes: write to a temporary name in the same folder, then rename over the target."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def write_atomic(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Call `write(tmp_path)`, then move the result to `path`; a crash leaves no half-written file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_atomic(path, lambda tmp: Path(tmp).write_text(text))


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Bytes serialised in memory first: Python's own file write then reports a full disk as OSError (ENOSPC),
    which the runner turns into one line; safetensors' and torch.save's writers report it as unrelated
    RuntimeErrors."""
    return write_atomic(path, lambda tmp: Path(tmp).write_bytes(data))
