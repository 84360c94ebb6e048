"""Where models and data come from: a local asset root when one is set up, else the Hugging Face Hub.

Set LORA_LAB_ASSETS to a folder laid out like ../shared (models/<name>/, data/imdb/*.parquet) and every
config runs offline; leave it unset and the same configs download from the Hub. Before the first download
the Hub is looked at once (a few seconds at most), so a machine without it gets one clear error at once
instead of a minute of retries; HF_HUB_OFFLINE=1 skips that look and reads the Hugging Face cache.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from urllib.parse import urlparse

from huggingface_hub import constants

ENV_VAR = "LORA_LAB_ASSETS"
PROBE_TIMEOUT_S = 3


def asset_root() -> Path | None:
    root = os.environ.get(ENV_VAR)
    return Path(root).expanduser() if root else None


def is_path(name: str) -> bool:
    """Hub ids are "name" or "org/name"; anything else (or anything that exists on disk) is a local path."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or Path(name).expanduser().exists()


@cache
def unreachable(url: str) -> str | None:
    """Why the host of `url` cannot be reached (one TCP connection, PROBE_TIMEOUT_S at most), or None."""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=PROBE_TIMEOUT_S).close()
    except OSError as err:
        return f"{parsed.hostname}: {err.strerror or err}"
    return None


def on_disk(hub_id: str, local: Mapping | None) -> str | None:
    """`hub_id` itself when it is a path, else the folder `local.path` under the asset root when that exists
    and holds `hub_id` (`local.holds`): a local copy serves only the name it is a copy of, so asking for
    another model or dataset never quietly gets this one."""
    if is_path(hub_id):
        return str(Path(hub_id).expanduser())
    root = asset_root()
    if local and local["holds"] == hub_id and root is not None and (root / local["path"]).exists():
        return str(root / local["path"])
    return None


def resolve(hub_id: str, local: Mapping | None, what: str, hint: Callable[[], str] | None = None) -> str:
    """The copy on disk (`on_disk`), else the Hub id once the Hub has answered (or HF_HUB_OFFLINE=1 says to
    use the cache). `what` and `hint()` go into the error: what was being loaded, and which settings would
    work here instead."""
    path = on_disk(hub_id, local)
    if path is not None:
        return path
    why = None if constants.HF_HUB_OFFLINE else unreachable(constants.ENDPOINT)
    if why:
        fix = hint() if hint else _fix(local)
        raise FileNotFoundError(
            f"{what} {hub_id!r} is not under {_local_place(hub_id, local)} and the Hugging Face Hub is "
            f"unreachable ({why}); {fix}, or set HF_HUB_OFFLINE=1 to use the Hugging Face cache"
        )
    return hub_id


def describe_lookup(hub_id: str, local: Mapping | None) -> str:
    """One line saying what was tried, for errors after the Hub (or the cache) did not have it."""
    return (
        f"not under {_local_place(hub_id, local)}, and the Hub id {hub_id!r} failed "
        f"(not on the Hub, or not in the cache with HF_HUB_OFFLINE=1); {_fix(local)}"
    )


def _local_place(hub_id: str, local: Mapping | None) -> str:
    root = asset_root()
    if not local:
        return "the asset root (this config names no local folder)"
    place = str(root / local["path"]) if root else f"${ENV_VAR}/{local['path']} (${ENV_VAR} is not set)"
    return place if local["holds"] == hub_id else f"{place} (a copy of {local['holds']} only)"


def _fix(local: Mapping | None) -> str:
    return f"set {ENV_VAR} to a folder holding {local['path']}" if local else "pass a local path"
