"""The seven-row table the plain way: Hugging Face Trainer + PEFT, as the reference's blog post set it up.

Its own tokenisation (datasets.map), DataCollatorWithPadding, Trainer defaults otherwise. Only the choice of
examples comes from lora_lab, so that this and our runner train and evaluate on the same reviews.

    python experiments/imdb_rank_target/hf_trainer_baseline.py \
        --model-path ../shared/models/all-MiniLM-L6-v2 --data ../shared/data/imdb \
        --train-size 512 --eval-size 512 --max-length 128 --epochs 1 --out baseline.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
from datasets import Dataset
from omegaconf import OmegaConf
from peft import LoraConfig, TaskType, get_peft_model
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)

from lora_lab import config, methods
from lora_lab.data import load_imdb, subset
from lora_lab.families import FAMILIES


def reference_rows() -> list[tuple[str, str, list[str] | None, int | None]]:
    """(label, method kind, LoRA targets, rank) of the reference rows, read from conf/ as the runner reads
    them (the row list of experiment=imdb_ablation, BERT-family module names)."""
    rows = []
    for row in config.sweep_rows("imdb_ablation"):
        cfg = config.compose(["model=minilm", f"method={row}"])
        targets = list(FAMILIES["bert"].targets[cfg.method.targets]) if cfg.method.targets else None
        rows.append((methods.row_label(cfg), cfg.method.kind, targets, cfg.rank if targets else None))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-path", required=True, help="a BERT-family checkpoint (MiniLM in ../shared)")
    parser.add_argument("--data", required=True, help="folder with train.parquet and test.parquet")
    parser.add_argument("--train-size", type=int, required=True)
    parser.add_argument("--eval-size", type=int, required=True)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lora-lr", type=float, default=3e-4)
    parser.add_argument("--head-lr", type=float, default=1e-3)
    parser.add_argument("--full-lr", type=float, default=2e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    frames = load_imdb(OmegaConf.create({"source": args.data, "local": None}))
    train = Dataset.from_pandas(subset(frames["train"], args.train_size, args.seed, "train_size"))
    test = Dataset.from_pandas(subset(frames["test"], args.eval_size, args.seed, "eval_size"))
    tokenizer = AutoTokenizer.from_pretrained(args.model_path)

    def tokenize(batch):
        return tokenizer(batch["text"], truncation=True, max_length=args.max_length)

    def accuracy(pred):
        return {"accuracy": float((np.argmax(pred.predictions, axis=-1) == pred.label_ids).mean())}

    results, start = [], time.perf_counter()
    for label, kind, targets, rank in reference_rows():
        row_start = time.perf_counter()
        # As in the blog post: tokenise inside each experiment.
        train_tok = train.map(tokenize, batched=True)
        test_tok = test.map(tokenize, batched=True)
        model = AutoModelForSequenceClassification.from_pretrained(args.model_path, num_labels=2)
        if targets:
            model = get_peft_model(
                model,
                LoraConfig(
                    task_type=TaskType.SEQ_CLS,
                    r=rank,
                    lora_alpha=2 * rank,
                    lora_dropout=0.1,
                    target_modules=targets,
                    bias="none",
                ),
            )
            lr = args.lora_lr
        elif kind == "head_only":
            for name, p in model.named_parameters():
                p.requires_grad = name.startswith("classifier")
            lr = args.head_lr
        else:
            lr = args.full_lr
        with tempfile.TemporaryDirectory() as out_dir:
            trainer = Trainer(
                model=model,
                args=TrainingArguments(
                    output_dir=out_dir,
                    num_train_epochs=args.epochs,
                    learning_rate=lr,
                    per_device_train_batch_size=args.batch_size,
                    save_strategy="no",
                    report_to="none",
                    seed=args.seed,
                    disable_tqdm=True,
                ),
                train_dataset=train_tok,
                eval_dataset=test_tok,
                data_collator=DataCollatorWithPadding(tokenizer),
                compute_metrics=accuracy,
            )
            trainer.train()
            acc = trainer.evaluate()["eval_accuracy"]
        results.append({"label": label, "accuracy": acc, "wall_s": time.perf_counter() - row_start})
        print(f"{label}: accuracy {acc:.4f}, {results[-1]['wall_s']:.1f} s", flush=True)
    summary = {"rows": results, "wall_s": time.perf_counter() - start, "args": vars(args)}
    with open(args.out, "w") as f:
        json.dump(summary, f, indent=2)


if __name__ == "__main__":
    main()
