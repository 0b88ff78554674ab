"""Single-label auto mode at many classes: the decoder's score scale and epoch grid, chosen on dev splits only.

    python -m benchmarks.many_class_dev --data ../shared/data/banking77
    python -m benchmarks.many_class_dev --data ../shared/data/banking77 --classes 24 48 77 --scales 1 4 8 \
        --epoch-grids 30,60,120,240 60,120,240      # longer epoch grids, also in the JSON
    python -m benchmarks.many_class_dev --table

BANKING77 (77 intents, names as label words, `tasks.BANKING77_CAUSAL`, SmolLM2-135M-Instruct). For 4 and 8 shots
(16 with `--shots`: the exact scores of 77 names cost about 4 sentences/s on 2 cores, so the run read 3 x 1,232
rows) and seeds 13, 21, 42, `tasks.sample_k_shot` draws a train split and a dev split of the same size from PolyAI's
training set; the test set is never read. Tasks of fewer classes are subsets of the intents (`--classes`, a few
seeded subsets each): the features of a subset are the same rows and label-score columns, so one extraction serves
every class count. For each candidate (score scale, epoch grid) auto mode (`peft_dect.dect.fit.fit_auto`, default
settings otherwise) is fitted on the train split with its cross-validation alone, and the figure is its accuracy and
macro-F1 on the dev split. A candidate is a fixed scale or a rule of the class count (`RULES`); the rule shipped
as `fit.score_scale` is "C/10", chosen as the best mean over 12 to 77 classes with no class count more than 1 point
below scale 1. Results (resumable): `benchmarks/results/many_class_dev.json`.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import numpy as np
import torch


OUT = Path(__file__).parent / "results" / "many_class_dev.json"
SHOTS = (4, 8)
SEEDS = (13, 21, 42)
CLASSES = (3, 6, 12, 24, 48, 77)
SUBSETS = 2  # seeded class subsets per class count below 77
RULES = {  # scale rules of the class count C, by name; the shipped one is `peft_dect.dect.fit.score_scale`
    "C/6": lambda c: min(8.0, max(1.0, c / 6)),
    "C/10": lambda c: min(8.0, max(1.0, c / 10)),
    "C/16": lambda c: min(8.0, max(1.0, c / 16)),
}
SCALES = ("1", "2", "4", "8", "16", *RULES)  # "shipped" (the library's rule) may be named too
EPOCH_GRIDS = ((30, 60),)


def subset(features, labels, content_free, classes: list[int]):
    """The rows of `classes` and their label-score columns, labels renumbered 0..len(classes)-1."""
    from peft_dect.features import Features

    keep = torch.isin(labels, torch.tensor(classes))
    index = torch.full((int(labels.max()) + 1,), -1, dtype=torch.long)
    index[torch.tensor(classes)] = torch.arange(len(classes))
    cols = torch.tensor(classes)
    sub = Features(features.hidden[keep], features.label_logits[keep][:, cols])
    return sub, index[labels[keep]], content_free[cols]


def evaluate(train, y, dev, y_dev, content_free, classes: int) -> dict:
    from types import SimpleNamespace

    from peft_dect.dect import decoder
    from peft_dect.dect.fit import fit_auto, probs
    from peft_dect.metrics import macro_f1

    cfg = SimpleNamespace(lam=None, calibrate=True, epochs=30, learning_rate=0.01, seed=0, decoder_dim=128,
                          radius_init="normalized")  # fmt: skip
    result = fit_auto(train, y, content_free, cfg, classes)
    with torch.no_grad():
        q = probs(dev.label_logits, content_free, result.calibrate)
        pred = decoder.scores(result.weights, dev.hidden, q, result.lam)[0].argmax(-1).numpy()
    return {"accuracy": float((pred == y_dev.numpy()).mean()), "macro_f1": macro_f1(pred, y_dev.numpy()),
            "epochs": result.epochs, "lam": result.lam, "calibrate": result.calibrate}  # fmt: skip


def extract(args):
    """Features of every train and dev split (cached in `--cache`), and the content-free label scores."""
    from peft import get_peft_model

    from peft_dect import DecTConfig
    from peft_dect.embedded import load_smollm2
    from peft_dect.prompting import content_free_texts, label_words_from_names
    from peft_dect.tasks import BANKING77_CAUSAL, load_banking77, sample_k_shot

    data = load_banking77(args.data)
    words = label_words_from_names(data["train"])
    model, tokenizer = load_smollm2()
    peft_model = get_peft_model(model, DecTConfig(template=BANKING77_CAUSAL, label_words=words, text_column="text"))
    peft_model.base_model.use_cache_dir(args.cache)
    bb = peft_model.base_model.backbone(tokenizer)
    bb.show_progress = args.progress
    a, b = content_free_texts(bb.template)
    content_free = bb.extract([a], None if b is None else [b]).label_logits[0]
    splits = {}
    for seed in args.seeds:
        for shots in sorted(args.shots, reverse=True):  # the largest first: it holds the smaller splits' rows
            split = sample_k_shot(data["train"], shots, seed)
            splits[(shots, seed)] = tuple(
                (bb.extract(split[name]["text"], desc=f"{shots}/{seed} {name}"), torch.tensor(split[name]["label"]))
                for name in ("train", "validation")
            )
    return splits, content_free, len(words)


def rule(name: str, shipped):
    """The scale function of a candidate: a number, a name of RULES, or "shipped" (the library's rule)."""
    if name == "shipped":
        return shipped
    if name in RULES:
        return RULES[name]
    return lambda c, s=float(name): s


def run(args) -> dict:
    from peft_dect.dect import fit

    splits, content_free, num_classes = extract(args)
    previous = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else {}
    results = {"benchmark": "many_class_dev", "data": "BANKING77 train split (dev splits; no test row read)",
               "shots": args.shots, "seeds": args.seeds, "classes": args.classes,
               "cells": previous.get("cells", {})}  # fmt: skip
    default_epochs, default_scale = fit.AUTO_EPOCHS, fit.score_scale
    try:
        for classes in args.classes:
            subsets = [list(range(num_classes))] if classes >= num_classes else [
                sorted(np.random.RandomState(s).choice(num_classes, classes, replace=False).tolist())
                for s in range(SUBSETS)
            ]  # fmt: skip
            for (shots, seed), ((train, y), (dev, y_dev)) in splits.items():
                for i, chosen in enumerate(subsets):
                    tr, ytr, cf = subset(train, y, content_free, chosen)
                    de, yde, _ = subset(dev, y_dev, content_free, chosen)
                    for scale in args.scales:
                        for grid in args.epoch_grids:
                            fit.AUTO_EPOCHS, fit.score_scale = grid, rule(scale, default_scale)
                            key = f"C={classes};k={shots};seed={seed};subset={i};scale={scale};epochs={grid}"
                            if key in results["cells"]:
                                continue
                            start = time.perf_counter()
                            cell = evaluate(tr, ytr, de, yde, cf, len(chosen))
                            cell["decoder_seconds"] = time.perf_counter() - start
                            results["cells"][key] = cell
                logging.info("C=%d k=%d seed=%d done", classes, shots, seed)
            save(args.out, results)
    finally:
        fit.AUTO_EPOCHS, fit.score_scale = default_epochs, default_scale
    results["summary"] = summary(results)
    for name, part in (("shots", 1), ("seeds", 2), ("classes", 0)):  # of every cell, earlier runs' included
        results[name] = sorted({int(key.split(";")[part].split("=")[1]) for key in results["cells"]})
    return results


def save(path, results: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(results, indent=1) + "\n")


def summary(results: dict) -> dict:
    """Mean dev accuracy and macro-F1 (points) per class count, shots and candidate, over seeds and subsets."""
    groups: dict[str, list[dict]] = {}
    for key, cell in results["cells"].items():
        c, k, _, _, scale, epochs = key.split(";")
        groups.setdefault(f"{c};{k};{scale};{epochs}", []).append(cell)
    return {g: {m: round(100 * statistics.mean(x[m] for x in cells), 2) for m in ("accuracy", "macro_f1")}
            for g, cells in groups.items()}  # fmt: skip


def table(results: dict, shots: tuple[int, ...] = SHOTS) -> str:
    """Dev accuracy per class count (rows) and candidate (columns), the mean over `shots`, seeds and subsets."""
    s = {g: v for g, v in results["summary"].items() if int(g.split(";")[1][2:]) in shots}
    order = {name: i for i, name in enumerate(SCALES)}
    cands = sorted({";".join(g.split(";")[2:]) for g in s}, key=lambda x: (order.get(x.split(";")[0][6:], 99), x))
    counts = sorted({g.split(";")[0] for g in s}, key=lambda x: int(x[2:]))
    rows = ["| classes | " + " | ".join(cands) + " |", "|---|" + "---|" * len(cands)]
    for c in counts:
        got = [[v["accuracy"] for g, v in s.items() if g.startswith(c + ";") and g.endswith(x)] for x in cands]
        rows.append(f"| {c[2:]} | " + " | ".join(f"{statistics.mean(m):.1f}" if m else "-" for m in got) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/banking77", help="the banking77 folder")
    parser.add_argument("--shots", nargs="+", type=int, default=list(SHOTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--classes", nargs="+", type=int, default=list(CLASSES))
    parser.add_argument("--scales", nargs="+", default=list(SCALES), help="numbers, names of RULES, or shipped")
    parser.add_argument(
        "--epoch-grids",
        nargs="+",
        type=lambda v: tuple(int(e) for e in v.split(",")),
        default=list(EPOCH_GRIDS),
        help="auto mode's epoch snapshots, e.g. 30,60 30,60,120,240",
    )
    parser.add_argument("--cache", default=str(Path(__file__).parent / ".cache"), help="feature cache folder")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--extract-only", action="store_true", help="fill the feature cache and stop")
    parser.add_argument("--table", action="store_true", help="print the table from --out and stop")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.table:
        results = json.loads(Path(args.out).read_text())
        print(table(results))
        others = sorted({int(g.split(";")[1][2:]) for g in results["summary"]} - set(SHOTS))
        for k in others:  # e.g. 16 shots, run for fewer candidates and seeds
            print(f"\n{k} shots:\n" + table(results, (k,)))
        return
    if args.extract_only:
        extract(args)
        return
    results = run(args)
    save(args.out, results)
    print(table(results, tuple(args.shots)))


if __name__ == "__main__":
    main()
