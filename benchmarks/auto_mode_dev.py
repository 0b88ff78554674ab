"""How DecT's modes do on the dev splits: the study behind auto mode's defaults (no test set is read).

    nice -n 5 env OMP_NUM_THREADS=1 python -m benchmarks.auto_mode_dev --data ../shared/data/fewshot

(One thread: the decoders are small, and on 2 busy cores two threads made each fit about 18 times slower.)

For 11 LM-BFF tasks (16-shot, 5 seeds, SmolLM2-135M-Instruct with each task's causal template) it extracts the
train and dev features once (cached), then scores on the dev split:

- zero-shot and calibrated zero-shot prompts, DecT in faithful mode;
- auto mode without an eval set (k-fold cross-validation on the training set), evaluated on the whole dev split;
- auto mode with an eval set: one half of the dev split is the eval set, the other half is scored, and back.

Each DecT figure is given for the shipped settings and for the VARIANTS of auto mode's grid (radius
initialisation, learning rate, epoch counts), on the same features: the study by which the grid was re-chosen when
the radii moved to the normalised space. Results go to `benchmarks/results/auto_mode_dev.json`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import warnings
from pathlib import Path
from types import SimpleNamespace

import torch


RESULTS = Path(__file__).parent / "results"
TASKS = ("SST-2", "cr", "mpqa", "sst-5", "CoLA", "MRPC", "QQP", "QNLI", "RTE", "SNLI", "MNLI")
SEEDS = (13, 21, 42, 87, 100)
LOW_SHOTS = 4
# name -> (radius_init, learning rate, auto mode's epoch counts); "shipped" is what fit.py does now
VARIANTS = {
    "reference": ("reference", 0.01, (30, 60)),
    "shipped": ("normalized", 0.01, None),
    "normalized": ("normalized", 0.01, (30, 60)),
    "normalized_e120": ("normalized", 0.01, (30, 60, 120)),
    "normalized_lr0.03": ("normalized", 0.03, (30, 60)),
    "normalized_lr0.03_e120": ("normalized", 0.03, (30, 60, 120)),
}


def task_features(peft_model, tokenizer, spec, data) -> dict:
    """Train/dev features and the content-free label log-probabilities of one seed."""
    bb = peft_model.base_model.backbone(tokenizer)
    bb.show_progress = False
    pair = bb.template.is_pair
    out = {}
    for split in ("train", "validation"):
        ds = data[split]
        feats = bb.extract(ds["text_a"], ds["text_b"] if pair else None)
        out[split] = (feats, torch.tensor(ds["label"]))
    out["content_free"] = bb.extract([""], [""] if pair else None).label_logits[0]
    return out


def accuracy(result, features, labels, content_free) -> float:
    from peft_dect.dect import decoder
    from peft_dect.dect.fit import probs

    q = probs(features.label_logits, content_free, result.calibrate)
    scores = decoder.scores(result.weights, features.hidden, q, result.lam)[0]
    return float((scores.argmax(-1) == labels).float().mean())


def evaluate_seed(feats: dict, seed: int, variants: dict = VARIANTS) -> dict:
    from unittest import mock

    from peft_dect.dect import fit
    from peft_dect.dect.fit import fit_auto, fit_faithful

    (train, y_train), (dev, y_dev) = feats["train"], feats["validation"]
    cf = feats["content_free"]
    classes = int(y_train.max()) + 1
    row = {
        "zero_shot": float((dev.label_logits.argmax(-1) == y_dev).float().mean()),
        "calibrated_zero_shot": float(((dev.label_logits - cf).argmax(-1) == y_dev).float().mean()),
    }
    perm = torch.randperm(len(y_dev), generator=torch.Generator().manual_seed(seed))
    halves = (perm[: len(perm) // 2], perm[len(perm) // 2 :])
    for name, (init, lr, epochs) in variants.items():
        cfg = SimpleNamespace(
            lam=None, calibrate=True, epochs=30, learning_rate=lr, seed=0, decoder_dim=128, radius_init=init
        )
        suffix = "" if name == "shipped" else f"/{name}"
        with mock.patch.object(fit, "AUTO_EPOCHS", epochs or fit.AUTO_EPOCHS):
            row["dect_faithful" + suffix] = accuracy(fit_faithful(train, y_train, cf, cfg, classes), dev, y_dev, cf)
            row["dect_auto_cv" + suffix] = accuracy(fit_auto(train, y_train, cf, cfg, classes), dev, y_dev, cf)
            correct = 0.0
            for chosen, scored in (halves, halves[::-1]):
                result = fit_auto(train, y_train, cf, cfg, classes, dev[chosen], y_dev[chosen])
                correct += accuracy(result, dev[scored], y_dev[scored], cf) * len(scored)
            row["dect_auto_half_dev" + suffix] = correct / len(y_dev)
    return row


def low_shot(feats: dict, seed: int, shots: int = LOW_SHOTS) -> dict:
    """Auto mode from `shots` training examples per class (a seeded subsample of the 16) with and without the
    low-shot margin rule, against the calibrated prior, scored on the whole dev split (cross-validation only)."""
    from unittest import mock

    from peft_dect.dect import fit
    from peft_dect.dect.fit import fit_auto

    (train, y_train), (dev, y_dev) = feats["train"], feats["validation"]
    cf = feats["content_free"]
    classes = int(y_train.max()) + 1
    gen = torch.Generator().manual_seed(seed)
    keep = torch.cat(
        [(y_train == c).nonzero().squeeze(1)[torch.randperm(16, generator=gen)[:shots]] for c in range(classes)]
    )
    sub, y_sub = train[keep], y_train[keep]
    row = {f"low{shots}/calibrated_prior": float(((dev.label_logits - cf).argmax(-1) == y_dev).float().mean())}
    for init in ("reference", "normalized"):
        cfg = SimpleNamespace(
            lam=None, calibrate=True, epochs=30, learning_rate=0.01, seed=0, decoder_dim=128, radius_init=init
        )
        row[f"low{shots}/auto_with_rule/{init}"] = accuracy(fit_auto(sub, y_sub, cf, cfg, classes), dev, y_dev, cf)
        with mock.patch.object(fit, "AUTO_MIN_SHOTS", 0):
            free = fit_auto(sub, y_sub, cf, cfg, classes)
        row[f"low{shots}/auto_without_rule/{init}"] = accuracy(free, dev, y_dev, cf)
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/fewshot")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--cache", default=str(Path(__file__).parent / ".cache"))
    parser.add_argument("--out", default=str(RESULTS / "auto_mode_dev.json"))
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")

    from peft import get_peft_model

    from peft_dect import DecTConfig
    from peft_dect.embedded import load_smollm2
    from peft_dect.tasks import get_task, load_task

    model, tokenizer = load_smollm2()
    peft_model = None
    per_task = {}
    for task in args.tasks:
        spec = get_task(task)
        template, words = spec.causal_template, spec.label_words
        if spec.name in ("SST-2", "cr"):  # the prompt of the DecT benchmark
            template, words = "{text_a} In summary, it was {mask}", {"negative": ["bad"], "positive": ["great"]}
        cfg = DecTConfig(template=template, label_words=words, text_column="text_a", text_pair_column="text_b")
        if peft_model is None:
            peft_model = get_peft_model(model, cfg, adapter_name=spec.name)
            peft_model.base_model.use_cache_dir(args.cache)
        else:
            peft_model.add_adapter(spec.name, cfg)
        peft_model.set_adapter(spec.name)
        rows = []
        for seed in args.seeds:
            feats = task_features(peft_model, tokenizer, spec, load_task(task, args.data, seed=seed))
            rows.append({**evaluate_seed(feats, seed), **low_shot(feats, seed)})
        per_task[spec.name] = {k: statistics.mean(r[k] for r in rows) for k in rows[0]}
        print(spec.name, {k: round(100 * v, 1) for k, v in per_task[spec.name].items()}, flush=True)
    keys = list(next(iter(per_task.values())))
    mean = {k: statistics.mean(t[k] for t in per_task.values()) for k in keys}
    result = {
        "benchmark": "auto_mode_dev",
        "split_scored": "dev",
        "seeds": list(args.seeds),
        "per_task": per_task,
        "mean": mean,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print("| task | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys))
    for name, row in {**per_task, "mean": mean}.items():
        print(f"| {name} | " + " | ".join(f"{100 * row[k]:.1f}" for k in keys) + " |")


if __name__ == "__main__":
    main()
