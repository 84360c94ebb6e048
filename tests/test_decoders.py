"""Decoder LLMs as classifiers, QLoRA on a 4-bit NF4 base (ours and PEFT), gradient checkpointing."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import batch, tiny_model

from lora_lab import data, methods, quant
from lora_lab.config import compose
from lora_lab.lora import load_adapter, lora_layers, save_adapter
from lora_lab.params import count
from lora_lab.train import enable_checkpointing


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("pad_left", [False, True])
def test_pooling_reads_the_last_real_token_whichever_side_pads(family: str, pad_left: bool) -> None:
    together, alone = alone_and_in_a_batch(tiny_model(family).eval(), pad_left)
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


SHORT, LONG = [5, 9, 13], [7, 3, 22, 41, 8, 19]


def alone_and_in_a_batch(model: torch.nn.Module, pad_left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits of a short review padded in a batch with a longer one, and of the review alone."""
    enc = data.Encoded(
        ids=torch.tensor(SHORT + LONG, dtype=torch.int32),
        offsets=torch.tensor([0, 3, 9]),
        labels=torch.tensor([0, 1]),
    )
    padded = data.collate(enc, torch.tensor([0, 1]), pad_id=0, pad_left=pad_left)
    assert padded["input_ids"][0].tolist() == ([0, 0, 0] + SHORT if pad_left else SHORT + [0, 0, 0])
    with torch.no_grad():
        together = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits
        alone = model(
            input_ids=torch.tensor([SHORT]), attention_mask=torch.ones(1, 3, dtype=torch.long)
        ).logits
    return together[0], alone[0]


def nf4_llama(seed: int = 0) -> torch.nn.Module:
    """The tiny Llama made 64 wide: bitsandbytes' CPU path quantises in blocks of 64 inputs."""
    return tiny_model("llama", seed, hidden_size=64, intermediate_size=128)


def test_nf4_base_computes_with_bitsandbytes_own_round_trip_of_each_weight(bnb_on_avx512_bf16) -> None:
    """Each quantised layer holds what bitsandbytes' functional API makes of that weight (quantize_4bit then
    dequantize_4bit, the same block size), and the 4-bit model computes exactly what a float model holding
    those de-quantised weights computes: its whole difference from the float base is NF4's rounding. (In eval
    mode without gradients too, where bitsandbytes would switch to its bf16 path on an AVX512-BF16 CPU.)"""
    functional = bnb_on_avx512_bf16.functional
    base = nf4_llama().eval()
    q = quant.quantize_nf4(copy.deepcopy(base)).eval()
    assert count(q)[1] == count(base)[1]  # packed 4-bit weights still count as the weights they stand for
    rounded = copy.deepcopy(base)
    layers = [(n, m) for n, m in q.named_modules() if isinstance(m, bnb_on_avx512_bf16.nn.Linear4bit)]
    assert len(layers) == 14  # 2 blocks x (q, k, v, o, gate, up, down); the head stays in float
    for name, layer in layers:
        state = layer.weight.quant_state
        packed, theirs = functional.quantize_4bit(
            base.get_submodule(name).weight.data, blocksize=state.blocksize, quant_type="nf4"
        )
        expected = functional.dequantize_4bit(packed, theirs)
        assert torch.equal(functional.dequantize_4bit(layer.weight.data, state), expected), name
        rounded.get_submodule(name).weight.data.copy_(expected)
    x = batch()["input_ids"]
    with torch.no_grad():
        h, hq = base.model(input_ids=x).last_hidden_state, q.model(input_ids=x).last_hidden_state
        torch.testing.assert_close(hq, rounded.model(input_ids=x).last_hidden_state, rtol=1e-5, atol=1e-5)
    assert not torch.equal(h, hq)  # and it is rounded: NF4 keeps 4 bits per weight and a scale per block


@pytest.mark.parametrize("impl", ["ours", "peft"])
@pytest.mark.slow
def test_qlora_steps_reduce_the_loss_and_the_adapter_loads_on_the_float_base(impl: str, tmp_path) -> None:
    pytest.importorskip("bitsandbytes")
    cfg = compose([f"impl={impl}", "method=attn_ffn_r8", "dropout=0"])
    base = nf4_llama()
    model = methods.prepare(quant.quantize_nf4(copy.deepcopy(base)), cfg).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    inputs, losses = batch(), []
    for _ in range(8):
        loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
    if impl == "ours":
        save_adapter(model, tmp_path)
    else:
        model.save_pretrained(tmp_path)
    restored = load_adapter(copy.deepcopy(base), tmp_path).eval()
    trained = {n: layer.lora_B for n, layer in lora_layers(model)} if impl == "ours" else None
    for name, layer in lora_layers(restored):
        assert layer.base_layer.weight.dtype == torch.float32 and layer.lora_B.abs().sum() > 0
        if trained is not None:
            torch.testing.assert_close(layer.lora_B, trained[name])
    with torch.no_grad():
        drift = (restored(**inputs).logits - model.eval()(**inputs).logits).abs().max().item()
    assert drift < 0.5  # the same adapter on the float base: only the quantisation error differs


def test_merge_refuses_a_4bit_base() -> None:
    pytest.importorskip("bitsandbytes")
    model = methods.prepare(quant.quantize_nf4(nf4_llama()), compose(["method=qv_r8"]))
    with pytest.raises(ValueError, match="cannot merge into a 4-bit base"):
        next(layer for _, layer in lora_layers(model)).merge()


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_gradient_checkpointing_gives_the_same_gradients(family: str) -> None:
    cfg = compose(["method=attn_ffn_r8", "dropout=0"])
    grads = []
    for checkpointing in (False, True):
        model = methods.prepare(tiny_model(family), cfg).train()
        if checkpointing:
            enable_checkpointing(model)
        torch.manual_seed(1)
        model(**batch()).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 2
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("kind", ["prompt_tuning", "prefix_tuning"])
def test_prompt_learning_on_a_decoder_pools_the_reviews_last_token(kind: str) -> None:
    """Prompt tuning hands the model embeddings, so the decoder cannot see the padding: its batches pad on
    the left (methods.pads_left). Left of the review, padding still moves it a few positions away from
    the virtual tokens (PEFT ignores position ids), hence the looser tolerance than the plain model's."""
    cfg = compose(["model=tiny_llama", f"method={kind}"])
    method = methods.of(cfg)
    model = methods.prepare(tiny_model("llama"), cfg).eval()
    assert method.pads_left(model) == (kind == "prompt_tuning")
    together, alone = alone_and_in_a_batch(model, method.pads_left(model))
    torch.testing.assert_close(together, alone, rtol=1e-3, atol=1e-3)
    assert not methods.of(compose(["method=prompt_tuning"])).pads_left(tiny_model("bert"))  # encoders: CLS
