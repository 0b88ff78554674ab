"""LM-BFF's prompting methods and DecT with demonstrations on SmolLM2-135M-Instruct, 16-shot, 5 seeds.

    nice -n 5 env OMP_NUM_THREADS=1 python -m benchmarks.lmbff_bench --data ../shared/data/fewshot

For each task and seed (templates and label words: `peft_dect.tasks`' causal prompts) it reports the task metric on
the test set of:

- zero-shot prompt: label-word scores of the manual prompt, no training;
- in-context learning (ICL): the same scoring with `--sets` sampled demonstration sets per input (one training
  example per class, LM-BFF's similar-half filter with all-MiniLM-L6-v2 unless `--demo-filter random`), averaged;
- auto label words: LM-BFF's label search (`--k-likely` candidates per class, the `--n-pairs` best assignments by
  training accuracy re-ranked by zero-shot dev score), then zero-shot scoring with the chosen words;
- DecT (auto mode, dev split for its choices) without and with the same demonstrations.

Large test sets are capped to a fixed sample of `--test-size` examples (seeded, the same for every seed and method).
Seconds are wall time on the shared 2-core machine; features are cached, so a method that reuses features another
method extracted first (e.g. DecT+demos reuses ICL's test features) reports less. Results are written to
`benchmarks/results/lmbff_<tasks>.json` after every (task, seed), and a rerun skips what the file already has.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import random
import statistics
import time
import warnings
from pathlib import Path

import torch


RESULTS = Path(__file__).parent / "results"
SEEDS = (13, 21, 42, 87, 100)
TASKS = ("SST-2", "cr", "mpqa", "RTE", "MRPC")
METHODS = ("zero_shot", "icl", "auto_label_words", "dect", "dect_demos")


def _metric(task, logits: torch.Tensor, labels) -> dict:
    from peft_dect.tasks import task_metric

    return task_metric(task, logits.argmax(-1).tolist(), list(labels))


def run_seed(task: str, seed: int, data, test, model, tokenizer, args) -> dict:
    """Every method on one (task, seed); returns the record."""
    from peft_dect.lmbff import label_word_scores, search_label_words
    from peft_dect.tasks import get_task, main_metric, task_metric

    spec = get_task(task)
    rec: dict = {"task": spec.name, "seed": seed, "shots": 16, "test_size": len(test), "metric": main_metric(task)}
    peft_model = model  # a PeftModel holding adapters "plain" and "demos"
    tuner = peft_model.base_model
    labels = test["label"]

    # ---- zero-shot prompt and DecT
    peft_model.set_adapter("plain")
    tuner.reset_adapter()
    t0 = time.perf_counter()
    zs = tuner.zero_shot_logits(test, tokenizer, calibrate=False, show_progress=not args.quiet)
    rec["zero_shot_seconds"] = time.perf_counter() - t0
    rec["zero_shot"] = _metric(task, zs, labels)
    rec["calibrated_zero_shot"] = _metric(task, tuner.zero_shot_logits(test, calibrate=True), labels)

    # ---- automatic label words: search on train (+ dev re-ranking), then zero-shot with the words
    def dev_metric(pred, ref):
        return task_metric(task, pred, ref)[main_metric(task)]

    bb = tuner.backbone(tokenizer)
    bb.show_progress = not args.quiet
    t0 = time.perf_counter()
    found = search_label_words(
        bb, data["train"], data["validation"], spec.classes, k_likely=args.k_likely, n_pairs=args.n_pairs,
        metric=dev_metric,
    )  # fmt: skip
    rec["auto_label_words_seconds"] = time.perf_counter() - t0
    ta, tb = list(test["text_a"]), (list(test["text_b"]) if bb.template.is_pair else None)
    inputs = ta if tb is None else list(zip(ta, tb))
    rec["auto_label_words"] = _metric(task, label_word_scores(bb, inputs, found.label_words), labels)
    rec["auto_label_words_choice"] = found.label_words
    rec["auto_label_words_top"] = found.candidates[:5]

    t0 = time.perf_counter()
    report = peft_model.fit(data["train"], tokenizer, data["validation"], show_progress=False)
    rec["dect_fit_seconds"] = time.perf_counter() - t0
    rec["dect"] = _metric(task, tuner.predict_logits(test), labels)
    rec["dect_choice"] = {k: report[k] for k in ("calibrate", "epochs", "lam")}

    # ---- demonstrations: in-context learning, then DecT on the same features
    peft_model.set_adapter("demos")
    tuner.reset_adapter()
    t0 = time.perf_counter()
    tuner.set_demonstrations(data["train"], tokenizer)
    icl = tuner.zero_shot_logits(test, calibrate=False, show_progress=not args.quiet)
    rec["icl_seconds"] = time.perf_counter() - t0
    rec["icl"] = _metric(task, icl, labels)
    t0 = time.perf_counter()
    report = peft_model.fit(data["train"], tokenizer, data["validation"], show_progress=False)
    rec["dect_demos_fit_seconds"] = time.perf_counter() - t0
    rec["dect_demos"] = _metric(task, tuner.predict_logits(test), labels)
    rec["dect_demos_choice"] = {k: report[k] for k in ("calibrate", "epochs", "lam")}
    rec["example_demo_prompt"] = tuner.backbone().render(ta[0], tb[0] if tb else None)
    return rec


def build(task: str, model, tokenizer, args):
    """A PEFT model with two DecT adapters for the task: 'plain' and 'demos'."""
    from peft import get_peft_model

    from peft_dect import DecTConfig
    from peft_dect.tasks import get_task

    spec = get_task(task)
    common = {
        "template": spec.causal_template,
        "label_words": spec.label_words,
        "text_column": "text_a",
        "text_pair_column": "text_b" if "{text_b}" in spec.causal_template else None,
        "max_length": args.max_length,
    }
    peft_model = get_peft_model(model, DecTConfig(**common), adapter_name="plain")
    demo_cfg = DecTConfig(**common, demonstrations=args.sets, demo_filter=args.demo_filter, demo_per_class=1, seed=0)
    peft_model.add_adapter("demos", demo_cfg)
    peft_model.base_model.use_cache_dir(args.cache)
    return peft_model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/fewshot", help="LM-BFF k-shot data folder")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--test-size", type=int, default=100, help="cap on test examples (fixed seeded sample)")
    parser.add_argument("--sets", type=int, default=1, help="demonstration sets per input, averaged")
    parser.add_argument("--demo-filter", default="similar", choices=["similar", "random"])
    parser.add_argument("--k-likely", type=int, default=30, help="label word candidates per class")
    parser.add_argument("--n-pairs", type=int, default=16, help="assignments re-ranked on dev")
    parser.add_argument("--max-length", type=int, default=256, help="token budget (LM-BFF: 256 with demos)")
    parser.add_argument("--cache", default=str(Path(__file__).parent / ".cache"), help="feature cache folder")
    parser.add_argument("--out", default=None)
    parser.add_argument("--table", action="store_true", help="print the README table of an existing result file")
    parser.add_argument("--merge", nargs="*", default=[], help="with --table: also take the records of these files")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else RESULTS / "lmbff_bench.json"
    if args.table:
        result = json.loads(out.read_text())
        seen = {(r["task"], r["seed"]) for r in result["records"]}
        for other in args.merge:
            extra = [r for r in json.loads(Path(other).read_text())["records"] if (r["task"], r["seed"]) not in seen]
            result["records"] += extra
            seen |= {(r["task"], r["seed"]) for r in extra}
        print(table(result))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")

    import peft_dect
    from peft_dect.embedded import load_smollm2
    from peft_dect.tasks import load_task

    result = json.loads(out.read_text()) if out.exists() else None
    if result is None:
        result = {
            "benchmark": "lmbff_bench",
            "model": "SmolLM2-135M-Instruct (Q4_1 GGUF de-quantised to float32)",
            "settings": {
                k: getattr(args, k) for k in ("test_size", "sets", "demo_filter", "k_likely", "n_pairs", "max_length")
            },
            "machine": {"threads": torch.get_num_threads(), "platform": platform.platform()},
            "versions": {
                "peft_dect": peft_dect.__version__,
                "torch": torch.__version__,
                "transformers": __import__("transformers").__version__,
            },
            "records": [],
        }
    done = {(r["task"].lower(), r["seed"]) for r in result["records"]}
    todo = [(seed, task) for seed in args.seeds for task in args.tasks if (task.lower(), seed) not in done]
    splits = {(seed, task): load_task(task, args.data, k=16, seed=seed) for seed, task in todo}  # fail early
    torch.manual_seed(0)
    base, tokenizer = load_smollm2()
    # seeds outer, tasks inner: if the run is cut short, every task has the same seeds
    for seed, task in todo:
        data = splits[(seed, task)]
        test = data["test"]
        if args.test_size and len(test) > args.test_size:
            rows = sorted(random.Random(0).sample(range(len(test)), args.test_size))
            test = test.select(rows)
        peft_model = build(task, base, tokenizer, args)
        rec = run_seed(task, seed, data, test, peft_model, tokenizer, args)
        base = peft_model.unload()  # the plain transformers model again, for the next adapters
        result["records"].append(rec)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
        logging.info("%s", json.dumps({k: v for k, v in rec.items() if "prompt" not in k and "top" not in k}))
    print(table(result))


def _mean_std(values: list[float], scale: float = 100.0) -> str:
    mean = statistics.mean(values) * scale
    std = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{mean:.1f} ± {std:.1f}"


def table(result: dict) -> str:
    """Markdown table: task metric mean ± std over seeds, and median seconds per seed."""
    rows = [
        "| task (metric, test size) | seeds | zero-shot | ICL (demos) | auto label words | DecT | DecT + demos "
        "| s: ICL / label search / DecT fit / DecT+demos fit |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for task in dict.fromkeys(r["task"] for r in result["records"]):
        recs = [r for r in result["records"] if r["task"] == task]
        metric = recs[0]["metric"]

        def col(key, recs=recs, metric=metric):
            return _mean_std([r[key][metric] for r in recs])

        def sec(key, recs=recs):
            return f"{statistics.median(r[key] for r in recs):.0f}"

        rows.append(
            f"| {task} ({metric}, {recs[0]['test_size']}) | {len(recs)} | {col('zero_shot')} | {col('icl')} "
            f"| {col('auto_label_words')} | {col('dect')} | {col('dect_demos')} "
            f"| {sec('icl_seconds')} / {sec('auto_label_words_seconds')} / {sec('dect_fit_seconds')} / "
            f"{sec('dect_demos_fit_seconds')} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    main()
