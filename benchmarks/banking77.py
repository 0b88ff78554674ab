"""BANKING77 (77 intents, class names as label words): DecT against zero-shot prompting, a linear probe and SetFit.

    python -m benchmarks.banking77 --data ../shared/data/banking77
    python -m benchmarks.banking77 --table          # the README table from the stored results

For 4, 8 and 16 shots per class and seeds 13, 21, 42, the train split and a dev split of the same size are drawn
from PolyAI's training set with `peft_dect.tasks.sample_k_shot`; every figure is on the whole 3,080-row test set.
SmolLM2-135M-Instruct reads `tasks.BANKING77_CAUSAL` with each intent's name as its label word (`card_arrival` ->
`card arrival`, see `label_words_from_names`). Methods, all on the same splits:

- `zero_shot`: the calibrated zero-shot prompt with the names (exact multi-token scores);
- `dect`: DecT with the default settings (auto mode, exact multi-token scores), fitted through the public `fit`
  with the dev split as its eval set;
- `dect_scale_1`: the same DecT fitted on the same features with the decoder's term at scale 1, as auto mode trained
  it before `fit.score_scale` (the previous default);
- `dect_first`: the same DecT, but each name scored by its first token only (names sharing one then tie in the
  prior; the decoder still reads the hidden state) and `zero_shot_first` its calibrated prior;
- `linear_probe`: logistic regression on the same hidden states, C chosen on the dev split;
- `setfit`: all-MiniLM-L6-v2 with SetFit's contrastive training (`--setfit-iterations` pairs per example and side;
  the budget is said in the results, as setfit's own default over-samples every negative pair, about 1.5 million
  pairs at 16 shots, which this 2-core machine cannot train).

Cost (`--cost-shots` per class, 1 by default, from seed 0; cold caches, measured within one run): DecT's fit time
against one plain inference pass of the model over the same inputs plus the label-continuation cost, and exact
multi-token scoring against the first-token path on the same prompts. Results: `benchmarks/results/banking77.json`
(written after every cell, and read back: the run resumes).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch


RESULTS = Path(__file__).parent / "results"
OUT = RESULTS / "banking77.json"
SHOTS = (4, 8, 16)
SEEDS = (13, 21, 42)
METHODS = ("zero_shot", "dect", "dect_scale_1", "zero_shot_first", "dect_first", "linear_probe", "setfit")
PROBE_C = (1.0, 0.1, 10.0, 0.01, 100.0)  # as the benchmark grid: sklearn's default C unless dev says otherwise


def scores(pred, labels) -> dict:
    from peft_dect.metrics import macro_f1

    pred, labels = np.asarray(pred), np.asarray(labels)
    return {"accuracy": float((pred == labels).mean()), "macro_f1": macro_f1(pred, labels)}


def first_token_backbone(dect_backbone):
    """A backbone like DecT's whose label words are scored by their first token, classes sharing one allowed."""
    from peft_dect.backbone import Backbone
    from peft_dect.prompting import Verbalizer

    v = dect_backbone.verbalizer
    first = tuple(tuple(dict.fromkeys(seq[0] for seq in per)) for per in v.sequences)
    verbalizer = Verbalizer(v.classes, v.words, first, v.aggregation, tuple((t,) for t in first), "first")
    bb = Backbone(
        dect_backbone.model, dect_backbone.tokenizer, dect_backbone.template, verbalizer, show_progress=False
    )
    bb.cache = dect_backbone.cache
    return bb


def fit_on_features(train, y, dev, y_dev, content_free, test, classes: int):
    """DecT auto mode (the library's `fit_auto`, default settings) on features; test predictions."""
    from types import SimpleNamespace

    from peft_dect.dect import decoder
    from peft_dect.dect.fit import fit_auto, probs

    cfg = SimpleNamespace(lam=None, calibrate=True, epochs=30, learning_rate=0.01, seed=0, decoder_dim=128,
                          radius_init="normalized")  # fmt: skip
    result = fit_auto(train, y, content_free, cfg, classes, dev, y_dev)
    with torch.no_grad():
        q = probs(test.label_logits, content_free, result.calibrate)
        pred = decoder.scores(result.weights, test.hidden, q, result.lam)[0].argmax(-1)
    return pred, result.report


def linear_probe(train, y, dev, y_dev, test):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def fit(c):
        return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000)).fit(train.hidden.numpy(), y)

    dev_acc = {c: float((fit(c).predict(dev.hidden.numpy()) == y_dev.numpy()).mean()) for c in PROBE_C}
    best = max(PROBE_C, key=lambda c: dev_acc[c])
    return fit(best).predict(test.hidden.numpy()), {"C": best, "dev_accuracy": dev_acc}


def setfit(train, test_texts, seed: int, iterations: int):
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    from benchmarks.grid.setfit_method import BATCH_SIZE, minilm_path

    model = SetFitModel.from_pretrained(minilm_path())
    data = Dataset.from_dict({"text": list(train["text"]), "label": list(train["label"])})
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, batch_size=BATCH_SIZE, num_iterations=iterations, num_epochs=1,
                                 seed=seed, save_strategy="no", report_to="none", show_progress_bar=False)  # fmt: skip
        start = time.perf_counter()
        Trainer(model=model, args=args, train_dataset=data).train()
        seconds = time.perf_counter() - start
    pred = model.predict(test_texts, batch_size=64, show_progress_bar=False)
    extra = {"num_iterations": iterations, "num_epochs": 1, "batch_size": BATCH_SIZE,
             "pairs": 2 * iterations * len(data), "train_seconds": seconds}  # fmt: skip
    return np.asarray(pred), extra


def cost(peft_model, model, tokenizer, train, dev, repeats: int = 1) -> dict:
    """Costs of a cold fit on `train` (and `dev`, its eval set; None: none): DecT's fit against plain inference
    plus the continuation cost, exact vs first-token label scores."""
    from benchmarks.dect_bench import plain_inference
    from peft_dect.features import FeatureCache
    from peft_dect.prompting import content_free_texts

    start = time.perf_counter()
    report = peft_model.fit(train, tokenizer=tokenizer, eval_dataset=dev, show_progress=False)
    fit_seconds = time.perf_counter() - start
    bb = peft_model.base_model.backbone(tokenizer)
    texts = list(train["text"]) + (list(dev["text"]) if dev is not None else []) + [content_free_texts(bb.template)[0]]
    prompts = [bb.render(t) for t in texts]
    first = first_token_backbone(bb)
    timings: dict[str, list[float]] = {"plain": [], "first": [], "exact": []}
    for _ in range(repeats):  # alternated, the faster of the runs each
        start = time.perf_counter()
        plain_inference(model, tokenizer, prompts, [bb.verbalizer.token_ids[0][0]], bb.batch_size)
        timings["plain"].append(time.perf_counter() - start)
        for name, backbone in (("first", first), ("exact", bb)):
            backbone.cache = FeatureCache()
            start = time.perf_counter()
            backbone.extract(texts)
            timings[name].append(time.perf_counter() - start)
    plain, first_s, exact = (min(timings[k]) for k in ("plain", "first", "exact"))
    continuation = exact - first_s
    return {
        "inputs": len(texts),
        "fit_seconds": fit_seconds,
        "plain_inference_seconds": plain,
        "extract_seconds_exact": exact,
        "extract_seconds_first": first_s,
        "exact_over_first": exact / first_s,
        "label_continuation_seconds": continuation,
        "fit_over_plain_plus_continuation": fit_seconds / (plain + continuation),
        "fit_over_plain": fit_seconds / plain,
        "continuation_steps": int(bb.plan.cont_input.numel()),
        "label_tokens": int(bb.plan.length.sum()),
        "fit_report": {k: v for k, v in report.items() if not k.startswith("grid")},
    }


def run(args) -> dict:
    from peft import get_peft_model

    from peft_dect import DecTConfig
    from peft_dect.embedded import load_smollm2
    from peft_dect.prompting import label_words_from_names
    from peft_dect.tasks import BANKING77_CAUSAL, load_banking77, sample_k_shot

    results = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else {"cells": {}}
    data = load_banking77(args.data)
    test = data["test"] if args.test_size is None else data["test"].shuffle(seed=0).select(range(args.test_size))
    words = label_words_from_names(data["train"])
    model, tokenizer = load_smollm2()
    dect_cfg = DecTConfig(template=BANKING77_CAUSAL, label_words=words, text_column="text")
    results.update(
        benchmark="banking77",
        model="SmolLM2-135M-Instruct (Q4_1 GGUF de-quantised to float32)",
        template=BANKING77_CAUSAL,
        test_size=len(test),
        shots=list(args.shots),
        seeds=list(args.seeds),
    )

    def save():
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")

    peft_model = get_peft_model(model, dect_cfg)
    if "cost" not in results and args.cost:  # first: its caches must be cold
        split = sample_k_shot(data["train"], args.cost_shots, 0)  # a seed of its own: no overlap with the cells'
        results["cost"] = cost(peft_model, model, tokenizer, split["train"], split["validation"])
        results["cost"]["shots"] = args.cost_shots
        save()
        logging.info("cost: %s", {k: v for k, v in results["cost"].items() if k != "fit_report"})
        peft_model.base_model.reset_adapter()
    peft_model.base_model.use_cache_dir(args.cache)
    bb = peft_model.base_model.backbone(tokenizer)
    bb.show_progress = args.progress
    first = first_token_backbone(bb)  # shares the DecT backbone's cache (other keys: other label scores)
    first.show_progress = args.progress
    y_test = np.asarray(test["label"])
    feats = {}
    for shots in args.shots:
        for seed in args.seeds:
            key = f"{shots}/{seed}"
            cell = results["cells"].setdefault(key, {})
            todo = [m for m in args.methods if m not in cell]
            if not todo:
                continue
            split = sample_k_shot(data["train"], shots, seed)
            train, dev = split["train"], split["validation"]
            y, y_dev = torch.tensor(train["label"]), torch.tensor(dev["label"])
            if "dect" in todo:
                passes = bb.passes
                start = time.perf_counter()
                report = peft_model.fit(train, tokenizer=tokenizer, eval_dataset=dev, show_progress=args.progress)
                seconds = time.perf_counter() - start
                fit_passes = bb.passes - passes
                pred = peft_model.predict_logits(test, tokenizer=tokenizer, show_progress=args.progress).argmax(-1)
                cell["dect"] = scores(pred, y_test) | {
                    "fit_seconds": seconds, "model_passes": fit_passes, "passes_with_test": bb.passes - passes,
                    "choice": {k: report[k] for k in ("calibrate", "epochs", "lam", "selected_on")},
                }  # fmt: skip
            needs = {"": ("zero_shot", "linear_probe", "dect_scale_1"), "_first": ("zero_shot_first", "dect_first")}
            for name, backbone in (("", bb), ("_first", first)):
                if not any(m in todo for m in needs[name]):
                    continue
                if "test" + name not in feats:
                    feats["test" + name] = backbone.extract(test["text"], desc="test")
                    feats["cf" + name] = backbone.extract([""]).label_logits[0]
                f_test, cf = feats["test" + name], feats["cf" + name]
                if f"zero_shot{name}" in todo:
                    cell[f"zero_shot{name}"] = scores((f_test.label_logits - cf).argmax(-1), y_test)
                if name == "" and "dect_scale_1" in todo:
                    from unittest import mock

                    from peft_dect.dect import fit

                    f_train, f_dev = backbone.extract(train["text"]), backbone.extract(dev["text"])
                    with mock.patch.object(fit, "score_scale", lambda num_classes: 1.0):
                        pred, report = fit_on_features(f_train, y, f_dev, y_dev, cf, f_test, len(words))
                    choice = {k: report[k] for k in ("calibrate", "epochs", "lam")}
                    cell["dect_scale_1"] = scores(pred, y_test) | {"choice": choice}
                if name == "_first" and "dect_first" in todo:
                    f_train, f_dev = backbone.extract(train["text"]), backbone.extract(dev["text"])
                    pred, report = fit_on_features(f_train, y, f_dev, y_dev, cf, f_test, len(words))
                    choice = {k: report[k] for k in ("calibrate", "epochs", "lam")}
                    cell["dect_first"] = scores(pred, y_test) | {"choice": choice}
            if "linear_probe" in todo:
                f_train, f_dev = bb.extract(train["text"]), bb.extract(dev["text"])
                pred, extra = linear_probe(f_train, y, f_dev, y_dev, feats["test"])
                cell["linear_probe"] = scores(pred, y_test) | extra
            if "setfit" in todo:
                pred, extra = setfit(train, list(test["text"]), seed, args.setfit_iterations)
                cell["setfit"] = scores(pred, y_test) | extra
            save()
            logging.info("%s: %s", key, {m: round(100 * v["accuracy"], 1) for m, v in cell.items()})
    return results


def table(results: dict) -> str:
    """Mean ± std over seeds of accuracy / macro-F1, per method and shot count."""
    rows = ["| method | " + " | ".join(f"{k} shots: acc / macro-F1" for k in results["shots"]) + " |",
            "|---|" + "---|" * len(results["shots"])]  # fmt: skip
    for method in METHODS:
        cells = []
        for shots in results["shots"]:
            got = [results["cells"].get(f"{shots}/{s}", {}).get(method) for s in results["seeds"]]
            got = [g for g in got if g]
            if not got:
                cells.append("-")
                continue
            parts = []
            for metric in ("accuracy", "macro_f1"):
                values = [100 * g[metric] for g in got]
                sd = statistics.stdev(values) if len(values) > 1 else 0.0
                parts.append(f"{statistics.mean(values):.1f} ± {sd:.1f}")
            cells.append(" / ".join(parts) + ("" if len(got) == len(results["seeds"]) else f" ({len(got)} seeds)"))
        rows.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/banking77")
    parser.add_argument("--shots", nargs="+", type=int, default=list(SHOTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--test-size", type=int, default=None, help="a seeded sample of the test set (quick runs)")
    parser.add_argument("--setfit-iterations", type=int, default=5)
    parser.add_argument("--no-cost", dest="cost", action="store_false", help="skip the cold timing of seed 13")
    parser.add_argument("--cost-shots", type=int, default=1, help="shots per class of the cold timing")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--cache", default=str(Path(__file__).parent / ".cache"))
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--table", action="store_true", help="print the README table from --out and stop")
    args = parser.parse_args(argv)
    if args.table:
        print(table(json.loads(Path(args.out).read_text())))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    print(table(run(args)))


if __name__ == "__main__":
    main()
