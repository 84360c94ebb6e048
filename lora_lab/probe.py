"""A linear probe: the classification head trained on what the frozen encoder computed once.

Head-only training runs the whole frozen encoder on every step (in train mode, dropout on) to train one
linear layer. The probe runs the encoder once per review in eval mode (no dropout) and keeps the head's
input on disk, keyed by the frozen weights and the token ids (so every seed of a study scores its shared
evaluation reviews from one file), then trains the same head with the same loop. No dropout anywhere makes
it a different computation from the reference's head-only row: a row of its own (`method=head_only_cached`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from transformers.modeling_outputs import SequenceClassifierOutput

from lora_lab.data import Encoded, save_tensors
from lora_lab.train import autocast, in_order


class Probe(nn.Module):
    """The head alone, fed cached features: what a sequence classifier computes past its frozen encoder."""

    def __init__(self, head: nn.Linear) -> None:
        super().__init__()
        self.head = head

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> SequenceClassifierOutput:
        logits = self.head(features)
        loss = None if labels is None else F.cross_entropy(logits.float(), labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


@torch.inference_mode()
def encode(
    model: nn.Module,
    head: nn.Module,
    data: Encoded,
    batch_size: int,
    pad_id: int,
    device: torch.device,
    precision: str,
    progress: bool = True,
) -> torch.Tensor:
    """The input `head` receives for each example of `data` (fp32, in `data`'s order), `model` in eval mode.
    A head that reads every position (decoders pick the last one after it) has no single input to keep."""
    captured: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda _module, args: captured.append(args[0]))
    model.to(device).eval()
    features = None
    try:
        for idx, batch in in_order(data, batch_size, pad_id, device, progress=progress, desc="encode"):
            del batch["labels"]
            with autocast(device, precision):
                model(**batch)
            got = captured.pop().float().cpu()
            if got.dim() != 2:
                raise ValueError(
                    f"method=head_only_cached needs a head that reads one vector per example; this model's "
                    f"head reads {tuple(got.shape)}; use method=head_only"
                )
            if features is None:
                features = torch.empty(len(data), got.shape[1])
            features[idx] = got
    finally:
        hook.remove()
    return features


def cached(
    model: nn.Module,
    head: nn.Module,
    sets: list[Encoded],
    cache_dir: str | Path,
    batch_size: int,
    pad_id: int,
    device: torch.device,
    precision: str,
    progress: bool = True,
    rebuild: bool = False,
) -> list[Encoded]:
    """Each of `sets` with its features (`encode`), read from `cache_dir` when these frozen weights, tokens,
    precision and device kind made them before, else encoded and saved there; `rebuild` (force=true) encodes
    again. The frozen weights are hashed once for all the sets."""
    head_params = {id(p) for p in head.parameters()}
    frozen = hashlib.sha256(f"{precision} {device.type}".encode())
    for name, tensor in (*model.named_parameters(), *model.named_buffers()):
        if id(tensor) not in head_params:
            frozen.update(name.encode())
            frozen.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    out = []
    for data in sets:
        digest = frozen.copy()
        digest.update(data.ids.numpy().tobytes())
        digest.update(data.offsets.numpy().tobytes())
        path = Path(cache_dir).expanduser() / f"features-{digest.hexdigest()[:24]}.pt"
        features = None if rebuild else _read(path, len(data))
        if features is None:
            features = encode(model, head, data, batch_size, pad_id, device, precision, progress)
            path.parent.mkdir(parents=True, exist_ok=True)
            save_tensors(path, features)
        out.append(dataclasses.replace(data, features=features))
    return out


def _read(path: Path, examples: int) -> torch.Tensor | None:
    """Cached features for `examples` examples, or None when there are none whole (missing or corrupt)."""
    if not path.is_file():
        return None
    try:
        features = torch.load(path)
    except Exception:  # truncated or corrupt: torch raises RuntimeError, EOFError, pickle errors...
        features = None
    if isinstance(features, torch.Tensor) and len(features) == examples:
        return features
    print(f"[lora-lab] feature cache {path} is unreadable or truncated; encoding again", file=sys.stderr)
    return None
