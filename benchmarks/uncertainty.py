"""What DecT knows of its own uncertainty: calibration, out-of-scope rejection, conformal sets, active learning.

    python -m benchmarks.uncertainty --fewshot ../shared/data/fewshot --banking77 ../shared/data/banking77
    python -m benchmarks.uncertainty --table          # the README tables from the stored results

Parts (`--parts`, all by default), every fit DecT's default auto mode through the library's own fitting code on
SmolLM2-135M-Instruct features (feature caches: `--cache` for the grid tasks, `--banking77-cache` for BANKING77):

- `calibration`: the grid's 8 tasks, 16 shots, seeds 13, 21, 42, 87, 100, the grid's 200-row test samples; the
  public `fit` (dev split as eval set), then test expected calibration error of softmax(logits) against the fitted
  temperature's softmax(logits / T), and accuracy (which the temperature cannot move).
- `conformal`: `predict_set`'s empirical test coverage and mean set size at alpha = 0.1 and 0.2 on SST-5, SNLI
  (as above: split conformal on the dev split) and BANKING77 (seed 13's 16 shots per intent, decoder seeds 0, 1, 2,
  `--banking77-test-size` test rows; with the 16-per-intent dev split as eval set, and with cross-validation only).
- `ood_dev`: which unknown score is the default, on dev data only: BANKING77 seed 13, 10 intents held out of
  training (chosen by seeds 100, 101, 102), AUROC of every score of `peft_dect.uncertainty.UNKNOWN_SCORES` on the
  seed's dev split (in-scope against held-out intents).
- `ood`: BANKING77, 10 intents held out by seeds 0, 1, 2, seed 13's 16 shots per in-scope intent (BANKING77
  features with exact multi-token scores cost about a second per input here, so one data seed): AUROC of
  `unknown_score` on `--banking77-test-size` test rows (the README's figures: 1,500), in-scope accuracy and
  out-of-scope recall of `predict(reject=True)` at the default reject rate, against the maximum softmax
  probability of DecT and of the linear probe (logistic regression on the same hidden states).
- `active`: SST-2 (pool: the 16-shot train and dev rows of all five seeds, test: the 200-row sample) and BANKING77
  (pool: seed 13's 16-shot train and dev rows, 2,464; test: the sample above, 500 rows in the README's figures):
  start from one example per class, add `k` = classes examples per round by `suggest` (margin and diverse) or at
  random, up to 16 per class on average; seeds 0, 1, 2 of the start and the random draws; test accuracy per round.

Results: `benchmarks/results/uncertainty.json` (one entry per part, written after each part).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch


RESULTS = Path(__file__).parent / "results"
OUT = RESULTS / "uncertainty.json"
GRID_TASKS = ("SST-2", "sst-5", "cr", "mpqa", "RTE", "MRPC", "QNLI", "SNLI")
GRID_SEEDS = (13, 21, 42, 87, 100)
ALPHAS = (0.1, 0.2)
B77_DATA_SEED = 13
B77_SEEDS = (0, 1, 2)  # intents held out (ood), decoder seeds (conformal)
HELD_OUT_INTENTS = 10
PARTS = ("calibration", "conformal", "ood_dev", "ood", "active")


def ece(probs, labels) -> float:
    from peft_dect.uncertainty import expected_calibration_error

    return expected_calibration_error(torch.as_tensor(probs), torch.as_tensor(labels))


def coverage(probs: torch.Tensor, labels: torch.Tensor, cal, alpha: float) -> dict:
    from peft_dect.uncertainty import prediction_sets

    sets = prediction_sets(probs, cal.set_threshold(alpha))
    covered = [int(y) in s for s, y in zip(sets, labels.tolist())]
    return {"coverage": float(np.mean(covered)), "mean_size": float(np.mean([len(s) for s in sets]))}


# ---------------------------------------------------------------- grid tasks through the public fit


def grid_cell(lm, task: str, seed: int, data_dir: str):
    """(test logits, test labels, calibration, fit report) of DecT's default fit on one grid cell."""
    from benchmarks.grid.data import load_cell
    from peft_dect.tasks import get_task

    data = load_cell(task, data_dir, 16, seed, 200)
    tuner = lm.activate(task)
    tuner.reset_adapter()
    tuner.backbone(lm.tokenizer).cache = lm.cache  # the grid's features: no model pass
    spec = get_task(task)
    metric = spec.metric if spec.metric in ("f1", "matthews_correlation") else None
    report = lm.peft_model.fit(data.train, lm.tokenizer, data.dev, show_progress=False, metric=metric)
    test, _, _ = lm.features(task, data.test)
    with torch.no_grad():
        logits = tuner.class_logits(test)
    return logits, torch.tensor(data.test["label"]), tuner.calibration, report


def part_calibration(args, lm) -> dict:
    from peft_dect.uncertainty import probabilities

    out = {}
    for task in GRID_TASKS:
        rows = []
        for seed in GRID_SEEDS:
            logits, labels, cal, _ = grid_cell(lm, task, seed, args.fewshot)
            before, after = probabilities(logits), probabilities(logits, cal.temperature)
            rows.append(
                {
                    "seed": seed,
                    "temperature": cal.temperature,
                    "ece_before": ece(before, labels),
                    "ece_after": ece(after, labels),
                    "accuracy_before": float((before.argmax(-1) == labels).float().mean()),
                    "accuracy_after": float((after.argmax(-1) == labels).float().mean()),
                    "heldout": cal.heldout,
                }
            )
        out[task] = {"seeds": rows, **{k: statistics.mean(r[k] for r in rows) for k in rows[0] if k != "seed"}}
        logging.info("calibration %s: ECE %.3f -> %.3f", task, out[task]["ece_before"], out[task]["ece_after"])
    out["tasks_improved"] = sum(out[t]["ece_after"] < out[t]["ece_before"] for t in GRID_TASKS)
    return out


# ---------------------------------------------------------------- BANKING77 on features


def default_settings() -> SimpleNamespace:
    """DecTConfig's decoder defaults, for fitting on features with `fit_auto`."""
    from peft_dect import DecTConfig

    cfg = DecTConfig(template="{text_a} {mask}", label_words={"a": ["a"], "b": ["b"]})
    keys = ("lam", "calibrate", "epochs", "learning_rate", "seed", "decoder_dim", "radius_init")
    return SimpleNamespace(**{k: getattr(cfg, k) for k in keys})


class Banking77:
    """BANKING77 features of SmolLM2 (class names as label words, exact multi-token scores) from the cache."""

    def __init__(self, data_dir: str, cache: str, test_size: int = 500) -> None:
        from peft import get_peft_model

        from peft_dect import DecTConfig
        from peft_dect.embedded import load_smollm2
        from peft_dect.prompting import label_words_from_names
        from peft_dect.tasks import BANKING77_CAUSAL, load_banking77

        self.data = load_banking77(data_dir)
        self.test = self.data["test"].shuffle(seed=0).select(range(test_size))
        words = label_words_from_names(self.data["train"])
        self.classes = list(words)
        model, tok = load_smollm2()
        peft_model = get_peft_model(
            model, DecTConfig(template=BANKING77_CAUSAL, label_words=words, text_column="text")
        )
        peft_model.base_model.use_cache_dir(cache)
        self.bb = peft_model.base_model.backbone(tok)
        self.bb.show_progress = False
        self.content_free = self.bb.extract([""]).label_logits[0]
        self.cfg = default_settings()

    def split(self, seed: int):
        from peft_dect.tasks import sample_k_shot

        return sample_k_shot(self.data["train"], 16, seed)

    def features(self, ds):
        return self.bb.extract(list(ds["text"])), torch.tensor(ds["label"])


def restrict(feats, classes: list[int]):
    """Features whose label-word scores keep the given classes' columns (as an adapter with those classes)."""
    from peft_dect.features import Features

    return Features(feats.hidden, feats.label_logits[:, classes])


def fit_features(train, labels, content_free, cfg, num_classes, evaluated=None):
    """DecT auto mode (the library's `fit_auto`, with `evaluated` = (features, labels) as its eval set) on features,
    its calibration as `fit` makes it, and a class-logit function."""
    from peft_dect.dect import decoder
    from peft_dect.dect.fit import fit_auto, probs
    from peft_dect.uncertainty import fit_calibration

    eval_feats, eval_labels = evaluated if evaluated is not None else (None, None)
    result = fit_auto(train, labels, content_free, cfg, num_classes, eval_feats, eval_labels)
    cal = None
    if result.heldout is not None:
        logits, y, split_rows = result.heldout
        cal = fit_calibration(logits, y, split_rows=split_rows)

    def logits(feats):
        with torch.no_grad():
            q = probs(feats.label_logits, content_free, result.calibrate)
            return decoder.scores(result.weights, feats.hidden, q, result.lam)[0]

    return logits, cal, result


def held_out_split(num_classes: int, seed: int) -> tuple[list[int], list[int]]:
    """(in-scope classes, the HELD_OUT_INTENTS held-out classes) drawn by `seed`."""
    order = np.random.RandomState(seed).permutation(num_classes).tolist()
    held = sorted(order[:HELD_OUT_INTENTS])
    return [c for c in range(num_classes) if c not in held], held


def auroc(scores, is_out) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.asarray(is_out), np.asarray(scores)))


def ood_cell(b77: Banking77, data_seed: int, class_seed: int, evaluate_on) -> dict:
    """Fit on in-scope intents of `data_seed`'s 16-shot train split; score `evaluate_on` (features, labels)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from peft_dect.uncertainty import UNKNOWN_SCORES, probabilities, unknown_scores

    inside, held = held_out_split(len(b77.classes), class_seed)
    remap = {c: i for i, c in enumerate(inside)}
    feats, labels = b77.features(b77.split(data_seed)["train"])
    keep = torch.tensor([int(y) in remap for y in labels])
    train = restrict(feats[keep], inside)
    y = torch.tensor([remap[int(v)] for v in labels[keep]])
    logits_of, cal, result = fit_features(train, y, b77.content_free[inside], b77.cfg, len(inside))
    test_feats, test_labels = evaluate_on
    test = restrict(test_feats, inside)
    is_out = np.array([int(v) in held for v in test_labels])
    logits = logits_of(test)
    scores = {kind: unknown_scores(logits, cal.temperature, kind).numpy() for kind in UNKNOWN_SCORES}
    out = {f"auroc_{kind}": auroc(s, is_out) for kind, s in scores.items()}
    msp_dect = 1 - probabilities(logits).max(-1).values.numpy()
    out["auroc_msp_dect_uncalibrated"] = auroc(msp_dect, is_out)
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    probe.fit(train.hidden.numpy(), y.numpy())
    out["auroc_msp_linear_probe"] = auroc(1 - probe.predict_proba(test.hidden.numpy()).max(-1), is_out)
    threshold = cal.reject_threshold(0.05)
    rejected = scores[cal.unknown_score] > threshold
    pred = logits.argmax(-1).numpy()
    truth = np.array([remap.get(int(v), -1) for v in test_labels])
    out.update(
        in_scope_accuracy=float((pred[~is_out] == truth[~is_out]).mean()),
        in_scope_accuracy_with_reject=float(((pred == truth) & ~rejected)[~is_out].mean()),
        false_rejection_rate=float(rejected[~is_out].mean()),
        out_of_scope_recall=float(rejected[is_out].mean()),
        held_out_intents=[b77.classes[c] for c in held],
        out_of_scope_rows=int(is_out.sum()),
        unknown_score=cal.unknown_score,
        choice={k: result.report[k] for k in ("calibrate", "epochs", "lam")},
    )
    return out


def part_ood_dev(args, b77) -> dict:
    dev = b77.features(b77.split(B77_DATA_SEED)["validation"])
    cells = [ood_cell(b77, B77_DATA_SEED, class_seed, dev) for class_seed in (100, 101, 102)]
    keys = [k for k in cells[0] if k.startswith("auroc_")]
    mean = {k: statistics.mean(c[k] for c in cells) for k in keys}
    from peft_dect.uncertainty import UNKNOWN_SCORES

    best = max(UNKNOWN_SCORES, key=lambda kind: mean[f"auroc_{kind}"])
    return {"cells": cells, "mean": mean, "best": best}


def part_ood(args, b77) -> dict:
    test = b77.features(b77.test)
    cells = [ood_cell(b77, B77_DATA_SEED, class_seed, test) for class_seed in B77_SEEDS]
    keys = [k for k, v in cells[0].items() if isinstance(v, float)]
    mean = {k: statistics.mean(c[k] for c in cells) for k in keys}
    return {"cells": cells, "mean": mean, "test_rows": len(b77.test)}


def part_conformal(args, lm, b77) -> dict:
    from peft_dect.uncertainty import probabilities

    out = {}
    for task in ("sst-5", "SNLI"):
        rows = []
        for seed in GRID_SEEDS:
            logits, labels, cal, _ = grid_cell(lm, task, seed, args.fewshot)
            p = probabilities(logits, cal.temperature)
            rows.append({"seed": seed, **{str(a): coverage(p, labels, cal, a) for a in ALPHAS}})
        out[task] = rows
    if b77 is not None:
        test, test_labels = b77.features(b77.test)
        split = b77.split(B77_DATA_SEED)
        feats, labels = b77.features(split["train"])
        dev = b77.features(split["validation"])
        for name, evaluated in (("BANKING77", dev), ("BANKING77 (cross-validation only)", None)):
            rows = []
            for seed in B77_SEEDS:
                cfg = SimpleNamespace(**{**vars(b77.cfg), "seed": seed})
                logits_of, cal, _ = fit_features(feats, labels, b77.content_free, cfg, len(b77.classes), evaluated)
                p = probabilities(logits_of(test), cal.temperature)
                rows.append({"seed": seed, **{str(a): coverage(p, test_labels, cal, a) for a in ALPHAS}})
            out[name] = rows
    summary = {}
    for task, rows in out.items():
        for a in ALPHAS:
            cov = statistics.mean(r[str(a)]["coverage"] for r in rows)
            size = statistics.mean(r[str(a)]["mean_size"] for r in rows)
            summary[f"{task}@{a}"] = {"coverage": cov, "mean_size": size, "target": 1 - a, "gap": cov - (1 - a)}
    return {"cells": out, "summary": summary, "banking77_test_rows": None if b77 is None else len(b77.test)}


# ---------------------------------------------------------------- active learning


def active_curve(pool, pool_labels, test, test_labels, content_free, cfg, num_classes, strategy, seed) -> list:
    """Test accuracy per round: one example per class to start, `num_classes` more per round, to 16 per class."""
    from peft_dect.uncertainty import probabilities, suggest

    rng = np.random.RandomState(seed)
    labelled = []
    for c in range(num_classes):
        rows = np.flatnonzero(pool_labels.numpy() == c)
        labelled.append(int(rng.choice(rows)))
    curve = []
    while True:
        idx = torch.tensor(labelled)
        logits_of, cal, _ = fit_features(pool[idx], pool_labels[idx], content_free, cfg, num_classes)
        acc = float((logits_of(test).argmax(-1) == test_labels).float().mean())
        curve.append({"labels": len(labelled), "accuracy": acc})
        if len(labelled) >= 16 * num_classes:
            return curve
        rest = np.setdiff1d(np.arange(len(pool_labels)), labelled)
        k = min(num_classes, len(rest))
        if strategy == "random":
            new = rng.choice(rest, k, replace=False).tolist()
        else:
            temperature = cal.temperature if cal is not None else 1.0
            probs = probabilities(logits_of(pool[torch.tensor(rest)]), temperature)
            emb = pool.hidden[torch.tensor(rest)] if strategy == "diverse" else None
            new = [int(rest[i]) for i in suggest(probs, k, strategy, emb)]
        labelled += new


def part_active(args, lm, b77) -> dict:
    import datasets

    from benchmarks.grid.data import load_cell
    from peft_dect.features import Features

    out = {}
    tasks = []
    cells = [load_cell("SST-2", args.fewshot, 16, s, 200) for s in GRID_SEEDS]
    pool_ds = datasets.concatenate_datasets([d for c in cells for d in (c.train, c.dev)])
    seen, rows = set(), []
    for i, t in enumerate(pool_ds["text_a"]):
        if t not in seen:
            seen.add(t)
            rows.append(i)
    pool_ds = pool_ds.select(rows)
    lm.activate("SST-2")
    pool, _, _ = lm.features("SST-2", pool_ds)
    test, _, _ = lm.features("SST-2", cells[0].test)
    cf, _, _ = lm.content_free("SST-2")
    cfg = default_settings()
    tasks.append(("SST-2", pool, torch.tensor(pool_ds["label"]), test, torch.tensor(cells[0].test["label"]), cf, 2))
    if b77 is not None:
        split = b77.split(B77_DATA_SEED)
        train, y = b77.features(split["train"])
        dev, y_dev = b77.features(split["validation"])
        test_b, y_test = b77.features(b77.test)
        tasks.append(("BANKING77", Features.cat([train, dev]), torch.cat([y, y_dev]), test_b, y_test,
                      b77.content_free, len(b77.classes)))  # fmt: skip
    for name, pool, pool_labels, test, test_labels, cf, classes in tasks:
        out[name] = {}
        for strategy in ("random", "margin", "diverse"):
            curves = [
                active_curve(pool, pool_labels, test, test_labels, cf, cfg, classes, strategy, seed)
                for seed in range(3)
            ]
            mean = [statistics.mean(c[r]["accuracy"] for c in curves) for r in range(len(curves[0]))]
            out[name][strategy] = {"labels": [p["labels"] for p in curves[0]], "mean_accuracy": mean, "runs": curves}
            logging.info("active %s %s: %s", name, strategy, [round(100 * a, 1) for a in mean])
        final = out[name]["random"]["mean_accuracy"][-1]
        for strategy in ("margin", "diverse"):
            entry = out[name][strategy]
            reached = [n for n, a in zip(entry["labels"], entry["mean_accuracy"]) if a >= final]
            entry["labels_to_reach_random_final"] = reached[0] if reached else None
        out[name]["random_final_labels"] = out[name]["random"]["labels"][-1]
    return out


# ---------------------------------------------------------------- tables


def table(results: dict) -> str:
    lines = []
    cal = results.get("calibration")
    if cal:
        lines += ["| task | ECE before | ECE after | temperature | accuracy |", "|---|---|---|---|---|"]
        for t in GRID_TASKS:
            r = cal[t]
            lines.append(
                f"| {t} | {100 * r['ece_before']:.1f} | {100 * r['ece_after']:.1f} | {r['temperature']:.2f} | "
                f"{100 * r['accuracy_after']:.1f} |"
            )
        lines.append(f"\nECE lower after calibration on {cal['tasks_improved']} of {len(GRID_TASKS)} tasks.\n")
    conf = results.get("conformal")
    if conf:
        lines += ["| task | alpha | coverage | target | mean set size |", "|---|---|---|---|---|"]
        for key, r in conf["summary"].items():
            task, alpha = key.split("@")
            lines.append(
                f"| {task} | {alpha} | {100 * r['coverage']:.1f} | {100 * r['target']:.0f} | {r['mean_size']:.2f} |"
            )
        lines.append("")
    ood = results.get("ood")
    if ood:
        m = ood["mean"]
        lines += [
            "| out-of-scope score (BANKING77, 10 intents held out) | AUROC |",
            "|---|---|",
            f"| DecT `unknown_score` ({ood['cells'][0]['unknown_score']}) | "
            f"{100 * m['auroc_' + ood['cells'][0]['unknown_score']]:.1f} |",
            f"| DecT maximum softmax probability | {100 * m['auroc_msp_dect_uncalibrated']:.1f} |",
            f"| linear probe maximum softmax probability | {100 * m['auroc_msp_linear_probe']:.1f} |",
            "",
            f"At the default reject rate (0.05): in-scope accuracy {100 * m['in_scope_accuracy']:.1f} without "
            f"rejection, {100 * m['in_scope_accuracy_with_reject']:.1f} with it (rejections counted wrong); false "
            f"rejections {100 * m['false_rejection_rate']:.1f}%, out-of-scope recall "
            f"{100 * m['out_of_scope_recall']:.1f}%.\n",
        ]
    act = results.get("active")
    if act:
        lines += ["| task | strategy | accuracy by labelled examples |", "|---|---|---|"]
        for task, r in act.items():
            if not isinstance(r, dict):
                continue
            for strategy in ("random", "margin", "diverse"):
                e = r[strategy]
                shown = ", ".join(f"{n}: {100 * a:.1f}" for n, a in zip(e["labels"], e["mean_accuracy"]))
                lines.append(f"| {task} | {strategy} | {shown} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fewshot", default="../shared/data/fewshot", help="LM-BFF k-shot data folder")
    parser.add_argument("--banking77", default=None, help="BANKING77 folder (PolyAI's CSV files); none: skipped")
    parser.add_argument("--cache", default=str(Path(__file__).parent / ".cache"), help="grid feature cache")
    parser.add_argument("--banking77-cache", default=str(Path(__file__).parent / ".cache"))
    parser.add_argument("--banking77-test-size", type=int, default=500, help="seeded sample of BANKING77's test set")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--table", action="store_true", help="print the README tables from --out and stop")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    results = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else {}
    if args.table:
        print(table(results))
        return 0
    from benchmarks.grid.methods import SmolLM

    lm = SmolLM(args.cache)
    b77 = Banking77(args.banking77, args.banking77_cache, args.banking77_test_size) if args.banking77 else None
    for part in args.parts:
        if part in ("ood_dev", "ood") and b77 is None:
            logging.warning("part %s needs --banking77; skipped", part)
            continue
        start = time.perf_counter()
        if part == "calibration":
            results[part] = part_calibration(args, lm)
        elif part == "conformal":
            results[part] = part_conformal(args, lm, b77)
        elif part == "ood_dev":
            results[part] = part_ood_dev(args, b77)
        elif part == "ood":
            results[part] = part_ood(args, b77)
        else:
            results[part] = part_active(args, lm, b77)
        results[part]["seconds"] = time.perf_counter() - start
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
        logging.info("%s done in %.0f s", part, results[part]["seconds"])
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
