"""DecT on SmolLM2-135M-Instruct: accuracy and cost against zero-shot prompting, SST-2 and CR 16-shot.

    python -m benchmarks.dect_bench --data ../shared/data/fewshot

For each task and seed it reports test accuracy of the zero-shot prompt, the calibrated zero-shot prompt, DecT in
the paper's faithful mode and DecT in auto mode (which picks its settings on the seed's dev split), and times:

- fit: DecT's fit from a cold cache (feature extraction + decoder) against a plain inference pass over the same
  inputs (training inputs and the content-free input; for auto mode also the dev inputs it reads);
- predict: DecT prediction from a cold cache against plain inference over the same test sentences.

Plain inference is what a zero-shot user runs: the prompts in the same length-sorted batches, left padded, one
forward pass with logits at the last position only. Timings alternate the two within one run and keep the faster of
`--repeats` runs each, so the ratios are robust to the shared machine's noise. Results go to
`benchmarks/results/dect_<tasks>.json`; `--table` prints the README table from that file.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import time
import warnings
from pathlib import Path

import torch


RESULTS = Path(__file__).parent / "results"
TEMPLATE = "{text_a} In summary, it was {mask}"
LABEL_WORDS = {"negative": ["bad"], "positive": ["great"]}
SEEDS = (13, 21, 42, 87, 100)


def plain_inference(model, tokenizer, prompts: list[str], word_ids: list[int], batch_size: int) -> torch.Tensor:
    """Zero-shot label-word logits the plain way: left-padded batches, logits at the last position."""
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    lengths = [len(ids) for ids in tokenizer(prompts)["input_ids"]]
    order = sorted(range(len(prompts)), key=lengths.__getitem__)
    out = torch.empty(len(prompts), len(word_ids))
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                batch = tokenizer([prompts[i] for i in chunk], return_tensors="pt", padding=True)
                logits = model(**batch, logits_to_keep=1).logits[:, -1]
                out[chunk] = logits[:, word_ids].float()
    finally:
        tokenizer.padding_side = side
    return out


def timed(fn, *args, **kwargs):
    """(seconds, result) of one call."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def run(args) -> dict:
    from peft import get_peft_model

    import peft_dect
    from peft_dect import DecTConfig
    from peft_dect.embedded import load_smollm2
    from peft_dect.tasks import load_task

    torch.manual_seed(0)
    model, tokenizer = load_smollm2()
    config = DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS, text_column="text_a")
    dect = get_peft_model(model, config)
    tuner = dect.base_model
    cache_dir = Path(args.cache) if args.cache else None  # None: features live in memory only
    base = tuner.model  # the transformers model (its LM head passes through the DecT layer unchanged)
    records = []
    for task in args.tasks:
        splits = {seed: load_task(task, args.data, k=16, seed=seed) for seed in args.seeds}
        test = splits[args.seeds[0]]["test"]
        if args.test_size:
            test = test.select(range(min(args.test_size, len(test))))
        labels = torch.tensor(test["label"])
        tuner.use_cache_dir(cache_dir)
        bb = tuner.backbone(tokenizer)
        bb.batch_size = args.batch_size
        bb.show_progress = not args.quiet
        word_ids = [ids[0] for ids in bb.verbalizer.token_ids]
        logging.info("%s: extracting %d test features (cached for every seed and method)", task, len(test))
        zero_shot = tuner.zero_shot_logits(test, calibrate=False, show_progress=not args.quiet)
        calibrated = tuner.zero_shot_logits(test, calibrate=True)
        for seed in args.seeds:
            data = splits[seed]
            rec = {"task": task, "seed": seed, "shots": 16, "test_size": len(test)}
            rec["zero_shot"] = float((zero_shot.argmax(-1) == labels).float().mean())
            rec["calibrated_zero_shot"] = float((calibrated.argmax(-1) == labels).float().mean())

            # ---- fit cost from a cold cache, against plain inference over the same inputs
            for mode, eval_split in (("faithful", None), ("auto", data["validation"])):
                dect.peft_config["default"].mode = mode
                inputs = list(data["train"]["text_a"]) + (list(eval_split["text_a"]) if eval_split else [])
                prompts = [bb.render(t) for t in inputs + [""]]
                best_plain = best_fit = float("inf")
                for _ in range(args.repeats):
                    plain_s, _ = timed(plain_inference, base, tokenizer, prompts, word_ids, args.batch_size)
                    tuner.use_cache_dir(None)  # cold cache: the fit pays for its own model passes ...
                    tuner.reset_adapter()  # ... including the content-free one
                    fit_s, report = timed(dect.fit, data["train"], tokenizer, eval_split, show_progress=False)
                    best_plain, best_fit = min(best_plain, plain_s), min(best_fit, fit_s)
                tuner.use_cache_dir(cache_dir)
                pred = tuner.predict_logits(test).argmax(-1)
                rec[f"dect_{mode}"] = float((pred == labels).float().mean())
                rec[f"{mode}_fit_seconds"] = best_fit
                rec[f"{mode}_feature_seconds"] = report["feature_seconds"]
                rec[f"{mode}_decoder_seconds"] = report["decoder_seconds"]
                rec[f"{mode}_model_passes"] = report["model_passes"]
                rec[f"{mode}_plain_inference_seconds"] = best_plain
                rec[f"{mode}_fit_ratio"] = best_fit / best_plain
                if mode == "auto":
                    rec["auto_choice"] = {k: report[k] for k in ("calibrate", "epochs", "lam", "heldout_accuracy")}

            # ---- prediction cost on a fixed slice of the test set, cold cache
            sample = test.select(range(min(args.predict_size, len(test))))
            prompts = [bb.render(t) for t in sample["text_a"]]
            best_plain = best_pred = float("inf")
            for _ in range(args.repeats):
                plain_s, _ = timed(plain_inference, base, tokenizer, prompts, word_ids, args.batch_size)
                tuner.use_cache_dir(None)
                pred_s, _ = timed(tuner.predict_logits, sample)
                best_plain, best_pred = min(best_plain, plain_s), min(best_pred, pred_s)
            tuner.use_cache_dir(cache_dir)
            rec.update(
                predict_size=len(sample),
                predict_seconds=best_pred,
                predict_plain_seconds=best_plain,
                predict_ratio=best_pred / best_plain,
            )
            records.append(rec)
            logging.info("%s", json.dumps(rec))
    return {
        "benchmark": "dect_bench",
        "model": "SmolLM2-135M-Instruct (Q4_1 GGUF de-quantised to float32)",
        "template": TEMPLATE,
        "label_words": LABEL_WORDS,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "machine": {"cpus": torch.get_num_threads(), "platform": platform.platform()},
        "versions": {
            "peft_dect": peft_dect.__version__,
            "torch": torch.__version__,
            "transformers": __import__("transformers").__version__,
            "peft": __import__("peft").__version__,
        },
        "records": records,
    }


def _mean_std(values: list[float], scale: float = 100.0) -> str:
    mean = statistics.mean(values) * scale
    std = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{mean:.1f} ± {std:.1f}"


def table(result: dict) -> str:
    """Markdown table (mean ± std over seeds) of a result file."""
    rows = [
        "| task | zero-shot | calibrated zero-shot | DecT faithful | DecT auto "
        "| fit / plain inference (faithful, auto) | decoder s (faithful, auto) | predict / plain inference |",
        "|---|---|---|---|---|---|---|---|",
    ]
    tasks = list(dict.fromkeys(r["task"] for r in result["records"]))
    for task in tasks:
        recs = [r for r in result["records"] if r["task"] == task]

        def col(key, recs=recs):
            return [r[key] for r in recs]

        rows.append(
            f"| {task} | {_mean_std(col('zero_shot'))} | {_mean_std(col('calibrated_zero_shot'))} "
            f"| {_mean_std(col('dect_faithful'))} | {_mean_std(col('dect_auto'))} "
            f"| {statistics.median(col('faithful_fit_ratio')):.3f}, {statistics.median(col('auto_fit_ratio')):.3f} "
            f"| {statistics.median(col('faithful_decoder_seconds')):.3f}, "
            f"{statistics.median(col('auto_decoder_seconds')):.3f} "
            f"| {statistics.median(col('predict_ratio')):.3f} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/fewshot", help="LM-BFF k-shot data folder")
    parser.add_argument("--tasks", nargs="+", default=["SST-2", "cr"])
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--test-size", type=int, default=None, help="cap the test set (default: full)")
    parser.add_argument("--predict-size", type=int, default=256, help="test sentences timed for prediction")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2, help="timing repeats; the fastest run counts")
    parser.add_argument("--cache", default=str(Path(__file__).parent / ".cache"), help="feature cache folder")
    parser.add_argument("--out", default=None, help="result file (default: benchmarks/results/dect_<tasks>.json)")
    parser.add_argument("--table", action="store_true", help="print the README table of an existing result file")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else RESULTS / f"dect_{'_'.join(t.lower() for t in args.tasks)}.json"
    if args.table:
        print(table(json.loads(out.read_text())))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    result = run(args)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))


if __name__ == "__main__":
    main()
