"""Speed and memory of fine-tuning methods (ours and PEFT's) beside the floor, measured side by side.

    python -m lora_lab.bench                                   # MiniLM (assets) or DistilBERT, CPU, 16 x 128
    python -m lora_lab.bench --methods attn_ffn_r8 dora_attn_ffn_r8 ia3 houlsby pfeiffer prompt_tuning
    python -m lora_lab.bench --model distilbert --seq 256 --memory

The floor is what any LoRA step must pay: the frozen base's forward plus the input-gradient half of its
backward (embedding output requires grad, only the classifier trains). Step times are medians over rounds in
which every variant takes one step in turn, so machine noise hits all variants alike. Peak memory is measured
in a fresh subprocess per variant (CUDA: max allocated; CPU: peak RSS of that process). Inference latency is
measured for the base and each variant, unmerged and, where the method merges, merged.
"""

DESCRIPTION = __doc__.split("\n\n")[0]  # the command's --help line
