"""NLU++ banking: one prompt for all intents against one yes/no question per intent (`ClassQuestions`).

    python -m benchmarks.nlupp_questions --data ../shared/data/nlupp                 # fold 0, 200 test sentences
    python -m benchmarks.nlupp_questions --data ../shared/data/nlupp --folds 0 1 --test-size 400

Per training fold (the NLU++ low-data setting: one fold of about 100 sentences), on one seeded sample of
`--test-size` sentences of the other 19 folds (the question prompts cost 48 SmolLM2 passes per sentence, so the
benchmark does not score all 1,970), SmolLM2-135M-Instruct:

- `dect`: `DecTConfig(multi_label=True)` with `tasks.NLUPP_CAUSAL` and the intents' names as label words (the
  default of `benchmarks.nlupp`), one pass per sentence plus the names' continuation;
- `questions_zero_shot`: the yes/no adapter's calibrated zero-shot prior, an intent predicted where Yes is more
  probable than No after calibration;
- `dect_questions`: `ClassQuestions` over a two-class DecT adapter, `QUESTION_TEMPLATE` with each intent's
  description from NLU++'s ontology ("is the intent to ...?") as `{text_b}` and Yes / No as label words.

Both fitted methods report their held-out micro-F1 (on folds of the training sentences, no test sentence read): the
figure a user can choose by, beside the cost in model passes per sentence at training and at prediction. Metrics as
in `benchmarks.nlupp` (micro-F1, macro-F1, exact match, Hamming loss). Results:
`benchmarks/results/nlupp_questions.json` (resumable per fold and method).
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from .nlupp import METRICS, make_config, multi_hot, scores


OUT = Path(__file__).parent / "results" / "nlupp_questions.json"
METHODS = ("dect", "dect_questions", "questions_zero_shot")
QUESTION_TEMPLATE = "{text_a}\nQuestion: {text_b}\nAnswer: {mask}"
YES_NO = {"no": ["No"], "yes": ["Yes"]}


def run(args) -> dict:
    from peft import get_peft_model

    from peft_dect import DecTConfig
    from peft_dect.dect.questions import ClassQuestions
    from peft_dect.embedded import load_smollm2
    from peft_dect.tasks import load_nlupp

    out = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else {"cells": {}}
    data = load_nlupp(args.data)
    classes, columns = data.classes, data.columns
    questions = {c: data.descriptions[c] for c in classes}
    out.update(benchmark="nlupp_questions", question_template=QUESTION_TEMPLATE, yes_no=YES_NO,
               test_size=args.test_size, classes=len(classes))  # fmt: skip
    model, tokenizer = load_smollm2()
    single, _ = make_config(classes)
    peft_model = get_peft_model(model, single)
    peft_model.add_adapter("questions", DecTConfig(template=QUESTION_TEMPLATE, label_words=YES_NO, budget=1))
    peft_model.base_model.use_cache_dir(args.cache)
    fold = np.asarray(columns["fold"])
    for train_fold in args.folds:
        cell = out["cells"].setdefault(f"low/{train_fold}", {})
        train_idx = np.flatnonzero(fold == train_fold)
        if args.train_size is not None:  # a quick run
            train_idx = np.sort(np.random.RandomState(0).choice(train_idx, args.train_size, False))
        test_idx = np.sort(np.random.RandomState(0).choice(np.flatnonzero(fold != train_fold), args.test_size, False))
        train = {"text": [columns["text"][i] for i in train_idx], "labels": [columns["labels"][i] for i in train_idx]}
        test = {"text": [columns["text"][i] for i in test_idx], "labels": [columns["labels"][i] for i in test_idx]}
        cell["split"] = {"train_fold": train_fold, "train_rows": len(train_idx), "test_rows": len(test_idx)}
        peft_model.set_adapter("questions")
        run_fold(args, peft_model, tokenizer, ClassQuestions(peft_model, questions, label_column="labels"), cell,
                 train, test, classes, lambda: save(out, args.out))  # fmt: skip
    return out


def save(out: dict, path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(out, indent=1) + "\n")


def run_fold(args, peft_model, tokenizer, asker, cell: dict, train: dict, test: dict, classes, save_all) -> None:
    """The methods not yet in `cell` on one training fold: fitted on `train`, scored on `test`."""
    tuner = peft_model.base_model
    y_test = multi_hot(test["labels"], classes)
    texts = test["text"]

    def timed(name: str, adapter: str, fit, predict) -> None:
        peft_model.set_adapter(adapter)
        tuner.reset_adapter()
        before = tuner.backbone(tokenizer).passes
        start = time.perf_counter()
        report = fit()
        fit_seconds, fit_passes = time.perf_counter() - start, tuner.backbone(tokenizer).passes - before
        start = time.perf_counter()
        pred = predict()
        predict_seconds = time.perf_counter() - start
        predict_passes = tuner.backbone(tokenizer).passes - before - fit_passes
        cell[name] = scores(pred, y_test) | {
            "train_seconds": fit_seconds, "model_passes": fit_passes,
            "predict_seconds_per_input": predict_seconds / len(texts),
            "predict_passes_per_input": predict_passes / len(texts),
            "heldout_micro_f1": (report or {}).get("heldout_micro_f1")}  # fmt: skip
        save_all()
        logging.info("%s: micro-F1 %.1f", name, 100 * cell[name]["micro_f1"])

    def zero_shot():
        logits = tuner.zero_shot_logits(asker.pairs(texts), tokenizer, show_progress=args.progress)
        return ((logits[:, 1] - logits[:, 0]).view(len(texts), len(classes)) > 0).int().numpy()

    progress = {"show_progress": args.progress}
    todo = [m for m in args.methods if m not in cell]
    if "dect" in todo:
        timed("dect", "default", lambda: peft_model.fit(train, tokenizer, **progress),
              lambda: multi_hot(peft_model.predict(texts, tokenizer, **progress), classes))  # fmt: skip
    if "dect_questions" in todo:
        timed("dect_questions", "questions", lambda: asker.fit(train, tokenizer, **progress),
              lambda: multi_hot(asker.predict(texts, tokenizer, **progress), classes))  # fmt: skip
    for ratio in args.negatives:  # the study behind ClassQuestions' default: chosen by held-out micro-F1
        name = f"dect_questions_neg{ratio:g}"
        if name not in cell:
            timed(name, "questions", lambda r=ratio: asker.fit(train, tokenizer, negatives=r, **progress),
                  lambda: multi_hot(asker.predict(texts, tokenizer, **progress), classes))  # fmt: skip
    if "questions_zero_shot" in todo:
        # after dect_questions: its test prompts are cached, so its measured prediction passes are 0 (the same 48)
        timed("questions_zero_shot", "questions", lambda: None, zero_shot)


def table(results: dict) -> str:
    """Per method, mean over the folds run: the metrics in %, held-out micro-F1, train seconds and passes."""
    lines = ["| method | micro-F1 | macro-F1 | exact match | Hamming loss | held-out micro-F1 | train s | "
             "passes per training sentence | passes per predicted sentence |", "|" + "---|" * 9]  # fmt: skip
    names = [m for m in METHODS if m != "questions_zero_shot"]
    names += sorted({m for c in results["cells"].values() for m in c if m.startswith("dect_questions_neg")},
                    key=lambda m: float(m[len("dect_questions_neg"):]))  # fmt: skip
    for method in [*names, "questions_zero_shot"]:
        rows = [c[method] for c in results["cells"].values() if method in c]
        if not rows:
            continue
        trained = [c["split"]["train_rows"] for c in results["cells"].values() if method in c]

        def mean(key: str, rows=rows) -> float:
            return float(np.mean([r[key] for r in rows]))

        heldout = [r["heldout_micro_f1"] for r in rows if r.get("heldout_micro_f1") is not None]
        lines.append(
            f"| {method} | " + " | ".join(f"{100 * mean(m):.1f}" for m in METRICS)
            + (f" | {100 * np.mean(heldout):.1f}" if heldout else " | -")
            + f" | {mean('train_seconds'):.1f} | {np.mean([r['model_passes'] / n for r, n in zip(rows, trained)]):.1f}"
            + f" | {mean('predict_passes_per_input'):.1f} |"
        )  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data/nlupp", help="PolyAI's nlupp/data folder")
    parser.add_argument("--folds", type=int, nargs="+", default=[0], help="training folds (low-data setting)")
    parser.add_argument("--test-size", type=int, default=200, help="test sentences sampled from the other folds")
    parser.add_argument("--train-size", type=int, default=None, help="cap the training sentences (a quick run)")
    parser.add_argument(
        "--negatives",
        type=float,
        nargs="*",
        default=[],
        help="also fit on every Yes pair and this many No pairs per Yes pair",
    )
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "peft-dect-nlupp-questions"))
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--table", action="store_true", help="print the table of the results and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.table:
        print(table(json.loads(Path(args.out).read_text())))
        return
    print(table(run(args)))


if __name__ == "__main__":
    main()
