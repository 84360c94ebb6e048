"""Where models and data come from: a local asset root when one is set up, else the Hugging Face Hub.

Set LORA_LAB_ASSETS to a folder laid out like ../shared (models/<name>/, data/imdb/*.parquet) and every
config runs offline; leave it unset and the same configs download from the Hub.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "LORA_LAB_ASSETS"


def asset_root() -> Path | None:
    root = os.environ.get(ENV_VAR)
    return Path(root).expanduser() if root else None


def is_path(name: str) -> bool:
    """Hub ids are "name" or "org/name"; anything else (or anything that exists on disk) is a local path."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or Path(name).expanduser().exists()


def resolve(hub_id: str, local: str | None) -> str:
    """`hub_id` itself when it is a path; else the folder `local` under the asset root when that exists;
    else the Hub id."""
    if is_path(hub_id):
        return str(Path(hub_id).expanduser())
    root = asset_root()
    if local and root is not None and (root / local).exists():
        return str(root / local)
    return hub_id


def describe_lookup(hub_id: str, local: str | None) -> str:
    """One line saying what was tried, for error messages."""
    root = asset_root()
    where = f"{root / local}" if (root and local) else f"${ENV_VAR}/{local}" if local else None
    tried = f"local {where} (not found), then " if where else ""
    fix = f"set {ENV_VAR} to a folder holding {local}" if local else "pass a local path"
    return f"tried {tried}the Hub id {hub_id!r} (unreachable); {fix}"
