"""Helpers several test modules share: our LoRA and PEFT's on one base, and the command line in a subprocess
or in this process. (Fixtures live in conftest.py.)"""

from __future__ import annotations

import copy
import functools
import os
import runpy
import subprocess
import sys
from pathlib import Path

import torch
from conftest import ASSETS, batch
from hydra.core.global_hydra import GlobalHydra
from peft import LoraConfig, PeftModel, TaskType, get_peft_model

from lora_lab import assets, config
from lora_lab.families import family_of
from lora_lab.lora import apply_lora

RANK, ALPHA = 4, 8


def make_pair(
    model: torch.nn.Module, preset: str, dropout: float = 0.0, use_dora: bool = False, init: str = "kaiming"
) -> tuple[torch.nn.Module, PeftModel]:
    """The same base wrapped by ours and by PEFT, with PEFT's A, a random (non-zero) B and, for DoRA, a
    perturbed magnitude copied into ours."""
    family = family_of(model)
    targets, saved = list(family.targets[preset]), list(family.lora_modules_to_save)
    ours = apply_lora(
        copy.deepcopy(model),
        targets,
        rank=RANK,
        alpha=ALPHA,
        dropout=dropout,
        modules_to_save=saved,
        use_dora=use_dora,
        init=init,
    )
    peft = get_peft_model(
        copy.deepcopy(model),
        LoraConfig(
            task_type=TaskType.SEQ_CLS,
            r=RANK,
            lora_alpha=ALPHA,
            lora_dropout=dropout,
            target_modules=targets,
            modules_to_save=saved,
            use_dora=use_dora,
            init_lora_weights=True if init == "kaiming" else init,
        ),
    )
    ours_p, peft_p = trainable(ours, "ours"), trainable(peft, "peft")
    assert ours_p.keys() == peft_p.keys()
    with torch.no_grad():
        for key, p in peft_p.items():
            if "lora_B" in key:
                p.normal_(std=0.1)  # B = 0 would make every comparison trivially equal to the base
            if "magnitude" in key:
                p.mul_(1 + 0.1 * torch.randn_like(p))
            ours_p[key].copy_(p)
    return ours, peft


def trainable(model: torch.nn.Module, impl: str) -> dict[str, torch.nn.Parameter]:
    """Trainable parameters under one common naming (PEFT's saved-adapter keys)."""
    out = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if impl == "ours":
            key = "base_model.model." + name
            key = key.replace(".lora_A", ".lora_A.weight").replace(".lora_B", ".lora_B.weight")
            key = key.replace(".lora_magnitude", ".lora_magnitude_vector")
        else:
            key = name.replace(".lora_A.default.", ".lora_A.").replace(".lora_B.default.", ".lora_B.")
            key = key.replace(".lora_magnitude_vector.default.weight", ".lora_magnitude_vector")
            key = key.replace(".modules_to_save.default.", ".")
        out[key] = p
    return out


def loss_of(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    return model(**inputs).loss


def assert_same_logits_and_gradients(ours: torch.nn.Module, peft: PeftModel) -> None:
    ours.eval(), peft.eval()
    inputs = batch()
    torch.testing.assert_close(ours(**inputs).logits, peft(**inputs).logits, rtol=1e-5, atol=1e-6)
    loss_of(ours, inputs).backward()
    loss_of(peft, inputs).backward()
    ours_p, peft_p = trainable(ours, "ours"), trainable(peft, "peft")
    lora_keys = [k for k in ours_p if ".lora_" in k]
    assert lora_keys, "no LoRA weights were compared"
    for key in ours_p:
        torch.testing.assert_close(ours_p[key].grad, peft_p[key].grad, rtol=1e-4, atol=1e-7, msg=key)


def train_losses(model: torch.nn.Module, steps: int = 20, vocab: int = 100) -> list[float]:
    """Fit one fixed batch, so the loss must fall; reseeded so both runs get the same dropout draws."""
    torch.manual_seed(123)
    inputs = batch(vocab=vocab)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(steps):
        loss = loss_of(model, inputs)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def imported(stderr: str) -> set[str]:
    """The modules a process imported, from its stderr under PYTHONPROFILEIMPORTTIME=1 (`-X importtime`)."""
    return {line.rsplit("|", 1)[-1].strip() for line in stderr.splitlines() if "|" in line}


def cli(tmp_path: Path, cache: Path, *overrides: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "LORA_LAB_ASSETS": str(ASSETS),
        "LORA_LAB_CACHE": str(cache),
        **(env or {}),
    }
    for key in ("HYDRA_FULL_ERROR", "HF_HUB_OFFLINE"):
        env.pop(key, None)
    return subprocess.run(
        [sys.executable, "-m", "lora_lab.run", *overrides, f"results_dir={tmp_path / 'results'}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def run_module(module: str, args: list[str], monkeypatch) -> int:
    """`python -m MODULE ARGS` in this process (the same entry point; a subprocess costs seconds to import):
    its exit code, its output left to capsys. For what a command does; what the interpreter around it does
    (imports, signals, library notices at import, environment read at import) needs a subprocess."""
    monkeypatch.setattr(sys, "argv", [module, *args])
    # run.cli sets HYDRA_FULL_ERROR=1 for Hydra. Set it here first, so that monkeypatch records the original
    # and restores it: a delenv of an unset variable records nothing, and the 1 would stay for the next tests.
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
    finally:
        GlobalHydra.instance().clear()
    return 0


def in_process(tmp_path: Path, cache: Path, monkeypatch, args: list[str]) -> int:
    """`python -m lora_lab.run ARGS results_dir=tmp_path/results` in this process, from `tmp_path`, with
    `cache` for tokens and no network: its exit code."""
    monkeypatch.setenv("LORA_LAB_ASSETS", str(ASSETS))
    monkeypatch.setenv("LORA_LAB_CACHE", str(cache))
    monkeypatch.setattr(assets, "unreachable", lambda url: "no network in this test")
    monkeypatch.chdir(tmp_path)
    return run_module("lora_lab.run", [*args, f"results_dir={tmp_path / 'results'}"], monkeypatch)


@functools.cache
def experiment_folders() -> dict[str, str]:
    """Each experiment file's results folder, composed once per test process (several tests read it)."""
    paths = sorted((config.CONF_DIR / "experiment").glob("*.yaml"))
    return {p.stem: config.compose([f"experiment={p.stem}"]).experiment_name for p in paths}
