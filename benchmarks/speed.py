"""Backbone paths for DecT on SmolLM2-135M-Instruct: prediction and fit throughput against float32 PyTorch, and
test accuracy of auto mode per seed, SST-2 and CR 16-shot.

    python -m benchmarks.speed --data ../shared/data/fewshot

Paths: ``float32`` (PyTorch, the GGUF de-quantised, today's default), ``llama.cpp`` (the body run in-process by
llama.cpp from the GGUF file as stored, Q4_1; `model.base_model.use_llama_cpp(...)`), ``int8`` (PyTorch's dynamic
int8 quantisation of the linear layers), ``int8_outliers`` (the same by `peft_dect.quantize.quantize_int8`, which
keeps the layers with outlier inputs on 8 training texts and the LM head in float32), ``int8_smooth`` (the same
with SmoothQuant folded into the other layers, `smooth_alpha=SMOOTH_ALPHA`), ``int8_smooth_all`` (SmoothQuant, every
body layer int8), ``int8_token`` (every body layer int8 with one input scale per token,
`peft_dect.int8_linear.Int8Linear`, and SmoothQuant at `SMOOTH_ALPHA_PER_TOKEN`) and ``bfloat16`` (PyTorch).
Prediction throughput is DecT's `predict` from a cold cache on the first `--predict-size` test sentences of each
task, each path timed alternating with float32 in one run (`--repeats` pairs); the ratio is that of the medians.
Accuracy: auto mode with the seed's dev split on the full test sets (`--test-size` caps them), for every path at
least as fast as float32 (a slower path is reported without it), and of float32's fit of the same seed predicting
on the path's features (an adapter fitted once, served on a faster path). Also: the fit of seed 13 from a cold cache
against one plain pass of the same path over the same inputs, and a second adapter with other label words fitted on
texts already seen (model passes and seconds). Results go to `benchmarks/results/speed.json`; `--table` prints the
README table from it.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import platform
import statistics
import time
import warnings
from pathlib import Path

import torch

from .dect_bench import LABEL_WORDS, TEMPLATE, plain_inference


RESULTS = Path(__file__).parent / "results"
SEEDS = (13, 21, 42, 87, 100)
PATHS = (
    "float32",
    "llama.cpp",
    "int8",
    "int8_outliers",
    "int8_smooth",
    "int8_smooth_all",
    "int8_token",
    "bfloat16",
)
OTHER_WORDS = {"negative": ["terrible"], "positive": ["good"]}


def rss_mb() -> float:
    """Resident memory of this process now, MB (Linux)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def build(path: str, base, tokenizer, gguf: Path, threads: int, calibration: list[str]):
    """A DecT PEFT model whose backbone runs along `path`, and the RSS it added (MB); `calibration`: the texts that
    locate int8_outliers' float32 layers."""
    from peft import get_peft_model

    from peft_dect import DecTConfig
    from peft_dect.quantize import SMOOTH_ALPHA, SMOOTH_ALPHA_PER_TOKEN, quantize_int8

    before = rss_mb()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notices
        if path == "float32":
            model = base
        elif path == "llama.cpp":
            model = copy.deepcopy(base)
        elif path == "int8":  # the body's linear layers (the LM head, tied to the embeddings, stays float32)
            model = copy.deepcopy(base)
            model.model = torch.ao.quantization.quantize_dynamic(model.model, {torch.nn.Linear}, dtype=torch.qint8)
        elif path == "int8_outliers":  # the same, but layers with outlier inputs (and the LM head) stay float32
            model, _ = quantize_int8(base, tokenizer, calibration)
        elif path == "int8_smooth":  # and SmoothQuant on the rest, weights per output channel
            model, _ = quantize_int8(base, tokenizer, calibration, smooth_alpha=SMOOTH_ALPHA)
        elif path == "int8_smooth_all":  # SmoothQuant, no layer kept in float32 but the LM head
            no_outliers = dict(outlier_threshold=math.inf, smooth_alpha=SMOOTH_ALPHA)
            model, _ = quantize_int8(base, tokenizer, calibration, **no_outliers)
        elif path == "int8_token":  # one input scale per token, SmoothQuant, every body layer int8
            per_token = dict(activations="per_token", smooth_alpha=SMOOTH_ALPHA_PER_TOKEN)
            model, _ = quantize_int8(base, tokenizer, calibration, **per_token)
        elif path == "bfloat16":
            model = copy.deepcopy(base).to(torch.bfloat16)
        else:
            raise ValueError(f"unknown path {path!r}; choose from {PATHS}")
    # budget=1: the template alone on every path, so that each path runs the same prompts (auto mode's default
    # budget would try a demonstration set too, choose per path, and time different prompts)
    config = DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS, text_column="text_a", budget=1)
    dect = get_peft_model(model, config)
    if path == "llama.cpp":
        dect.base_model.use_llama_cpp(gguf, n_threads=threads)
    dect.base_model.set_tokenizer(tokenizer)
    return dect, rss_mb() - before


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def cold_predict(dect, data) -> float:
    """Seconds of DecT's predict on `data` with an empty feature cache."""
    dect.base_model.use_cache_dir(None)
    seconds, _ = timed(dect.base_model.predict_logits, data)
    return seconds


def plain_pass(path: str, dect, tokenizer, texts: list[str], batch_size: int) -> float:
    """Seconds of one plain pass of the path over prompted `texts` (what a zero-shot user runs)."""
    bb = dect.base_model.backbone(tokenizer)
    prompts = [bb.render(t) for t in texts]
    if path == "llama.cpp":
        ids = bb.tokenize(texts)
        seconds, _ = timed(bb.runner.hidden, ids)
        return seconds
    word_ids = [ids[0] for ids in bb.verbalizer.token_ids]
    seconds, _ = timed(plain_inference, dect.base_model.model, tokenizer, prompts, word_ids, batch_size)
    return seconds


def icl_prefix(dect, tokenizer, splits, args) -> list[dict]:
    """In-context learning with a fixed demonstration set (float32): the prompts' common prefix run once per batch
    against every prompt run whole, alternating, cold cache; and the largest difference of their label scores."""
    from peft_dect import DecTConfig

    tuner, out = dect.base_model, []
    for task in args.tasks:
        data = splits[task][args.seeds[0]]
        sample = data["test"].select(range(args.predict_size))
        for per_class in args.icl_per_class:
            config = DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS, text_column="text_a", demonstrations=1,
                                demo_per_class=per_class, demo_filter="fixed")  # fmt: skip
            dect.add_adapter("icl", config)
            dect.set_adapter("icl")
            tuner.set_demonstrations(data["train"], tokenizer)
            bb = tuner.backbone(tokenizer)
            times = {True: [], False: []}
            logits = {}
            for _ in range(args.repeats):
                for shared in (False, True):
                    bb.share_prefixes = shared
                    tuner.use_cache_dir(None)
                    seconds, logits[shared] = timed(tuner.zero_shot_logits, sample, calibrate=False)
                    times[shared].append(seconds)
            rows = bb.tokenize(list(sample["text_a"]))
            rec = {
                "task": task,
                "demo_per_class": per_class,
                "prompt_tokens_mean": statistics.mean(len(r) for r in rows),
                "shared_prefix_tokens": bb.shared_prefix(rows),
                "seconds_whole": statistics.median(times[False]),
                "seconds_shared": statistics.median(times[True]),
                "speedup": statistics.median(times[False]) / statistics.median(times[True]),
                "max_abs_logit_difference": float((logits[True] - logits[False]).abs().max()),
            }
            logging.info("icl %s", json.dumps(rec))
            out.append(rec)
            dect.set_adapter("default")
            dect.delete_adapter("icl")
    return out


def run(args) -> dict:
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    import peft_dect
    from peft_dect import DecTConfig
    from peft_dect.embedded import load_smollm2, smollm2_gguf
    from peft_dect.tasks import load_task

    torch.manual_seed(0)
    threads = torch.get_num_threads()
    base, tokenizer = load_smollm2()
    folder, name = smollm2_gguf()
    gguf = folder / name
    splits = {t: {s: load_task(t, args.data, k=16, seed=s) for s in args.seeds} for t in args.tasks}
    first = args.seeds[0]
    calibration = list(splits[args.tasks[0]][first]["train"]["text_a"][:8])
    models, added = {}, {}
    for path in args.paths:
        models[path], added[path] = build(path, base, tokenizer, gguf, threads, calibration)

    # ---- prediction throughput, each path alternating with float32
    throughput = {}
    for path in args.paths:
        if path == "float32":
            continue
        ours, ref = [], []
        for task in args.tasks:
            sample = splits[task][first]["test"].select(range(args.predict_size))
            for dect in (models["float32"], models[path]):
                dect.fit(splits[task][first]["train"], tokenizer, show_progress=False)
            for _ in range(args.repeats):
                ref.append(cold_predict(models["float32"], sample) / len(sample))
                ours.append(cold_predict(models[path], sample) / len(sample))
        throughput[path] = {
            "sentences_per_second": 1 / statistics.median(ours),
            "float32_sentences_per_second": 1 / statistics.median(ref),
            "throughput_ratio": statistics.median(ref) / statistics.median(ours),
        }
        logging.info("%s: %s", path, json.dumps(throughput[path]))

    # ---- accuracy per seed (auto mode, full test sets) and the fit of the first seed against a plain pass
    accurate = ["float32"] + [p for p in args.paths if p != "float32" and throughput[p]["throughput_ratio"] >= 1]
    accuracy = {p: {} for p in accurate}
    transfer = {p: {} for p in accurate}  # accuracy of float32's fit on each path's features
    fit_cost, second = {}, {}
    for path in accurate:
        dect = models[path]
        tuner = dect.base_model
        for task in args.tasks:
            test = splits[task][first]["test"]
            if args.test_size:
                test = test.select(range(min(args.test_size, len(test))))
            tuner.use_cache_dir(None)
            labels = torch.tensor(test["label"])
            for seed in args.seeds:
                data = splits[task][seed]
                tuner.reset_adapter()
                report = dect.fit(data["train"], tokenizer, data["validation"], show_progress=False)
                pred = tuner.predict_logits(test).argmax(-1)
                accuracy[path].setdefault(task, []).append(float((pred == labels).float().mean()) * 100)
                if path != "float32":  # float32's fit of this seed, predicting on this path's features
                    models["float32"].base_model.reset_adapter()
                    models["float32"].fit(data["train"], tokenizer, data["validation"], show_progress=False)
                    set_peft_model_state_dict(dect, get_peft_model_state_dict(models["float32"]))
                    pred = tuner.predict_logits(test).argmax(-1)
                    transfer[path].setdefault(task, []).append(float((pred == labels).float().mean()) * 100)
                if seed == first:
                    inputs = list(data["train"]["text_a"]) + list(data["validation"]["text_a"]) + [""]
                    plain = plain_pass(path, dect, tokenizer, inputs, args.batch_size)
                    tuner.use_cache_dir(None)
                    tuner.reset_adapter()
                    fit_s, report = timed(dect.fit, data["train"], tokenizer, data["validation"], show_progress=False)
                    fit_cost.setdefault(path, []).append(
                        {"task": task, "fit_seconds": fit_s, "plain_pass_seconds": plain, "ratio": fit_s / plain,
                         "decoder_seconds": report["decoder_seconds"]}
                    )  # fmt: skip
                    # a second adapter with other label words on the texts just seen
                    other_settings = dict(template=TEMPLATE, label_words=OTHER_WORDS, text_column="text_a", budget=1)
                    other_config = DecTConfig(**other_settings)
                    dect.add_adapter("other_words", other_config)
                    dect.set_adapter("other_words")
                    seconds, other = timed(dect.fit, data["train"], tokenizer, data["validation"], show_progress=False)
                    second.setdefault(path, []).append({"task": task, "model_passes": other["model_passes"],
                                                        "seconds": seconds})  # fmt: skip
                    dect.set_adapter("default")
                    dect.delete_adapter("other_words")
            logging.info("%s %s accuracy %s", path, task, accuracy[path][task])

    icl = icl_prefix(models["float32"], tokenizer, splits, args) if args.icl_per_class else []

    records = []
    for path in args.paths:
        rec = {"path": path, "added_rss_mb": added[path]}
        if path == "float32":
            rec["throughput_ratio"] = 1.0
        else:
            rec.update(throughput[path])
        if path in accuracy:
            rec["accuracy"] = accuracy[path]
            deltas = {
                t: [a - b for a, b in zip(accuracy[path][t], accuracy["float32"][t])] for t in args.tasks
            }  # fmt: skip
            rec["accuracy_delta_per_seed"] = deltas
            rec["accuracy_delta"] = {t: statistics.mean(d) for t, d in deltas.items()}
            if transfer[path]:
                rec["float32_fit_accuracy"] = transfer[path]
                rec["float32_fit_accuracy_delta"] = {
                    t: statistics.mean(a - b for a, b in zip(transfer[path][t], accuracy["float32"][t]))
                    for t in args.tasks
                }
        else:
            rec["accuracy_delta"] = None
            rec["accuracy_note"] = "slower than float32 here: accuracy not run"
        rec["fit"] = fit_cost.get(path)
        rec["second_adapter"] = second.get(path)
        records.append(rec)
    return {
        "benchmark": "speed",
        "model": "SmolLM2-135M-Instruct (Q4_1 GGUF)",
        "template": TEMPLATE,
        "label_words": LABEL_WORDS,
        "tasks": args.tasks,
        "seeds": args.seeds,
        "predict_size": args.predict_size,
        "repeats": args.repeats,
        "machine": {
            "threads": threads,
            "platform": platform.platform(),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        },
        "peak_rss_mb": peak_rss_mb(),
        "icl_shared_prefix": icl,
        "versions": {"peft_dect": peft_dect.__version__, "torch": torch.__version__},
        "records": records,
    }


def table(result: dict) -> str:
    """Markdown table of a result file."""
    rows = [
        "| path | predict sentences/s | × float32 (same run) | accuracy Δ vs float32, points (SST-2, CR) "
        "| float32's fit on the path: Δ, points | fit / plain pass of the path | 2nd adapter: passes, s |",
        "|---|---|---|---|---|---|---|",
    ]
    for rec in result["records"]:
        speed = rec.get("sentences_per_second", rec.get("float32_sentences_per_second"))
        if rec["path"] == "float32":
            others = [r for r in result["records"] if "float32_sentences_per_second" in r]
            speed = statistics.median(r["float32_sentences_per_second"] for r in others) if others else None
        delta = rec["accuracy_delta"]
        delta_s = ", ".join(f"{v:+.1f}" for v in delta.values()) if delta else "not run (slower)"
        moved = rec.get("float32_fit_accuracy_delta")
        moved_s = ", ".join(f"{v:+.1f}" for v in moved.values()) if moved else "-"
        fit = rec.get("fit")
        fit_s = ", ".join(f"{f['ratio']:.2f}" for f in fit) if fit else "-"
        second = rec.get("second_adapter")
        second_s = "; ".join(f"{s['model_passes']}, {s['seconds']:.2f}" for s in second) if second else "-"
        speed_s = f"{speed:.1f}" if speed else "-"
        rows.append(
            f"| {rec['path']} | {speed_s} | {rec['throughput_ratio']:.2f} | {delta_s} | {moved_s} | {fit_s} "
            f"| {second_s} |"
        )
    icl = result.get("icl_shared_prefix") or []
    if icl:
        rows += [
            "",
            "| ICL, fixed demonstrations (float32) | prompt tokens (mean) | shared prefix tokens | s whole | s shared "
            "| speed-up | max logit difference |",
            "|---|---|---|---|---|---|---|",
        ]
        for rec in icl:
            rows.append(
                f"| {rec['task']}, {rec['demo_per_class']} per class | {rec['prompt_tokens_mean']:.0f} "
                f"| {rec['shared_prefix_tokens']} | {rec['seconds_whole']:.1f} | {rec['seconds_shared']:.1f} "
                f"| {rec['speedup']:.2f} | {rec['max_abs_logit_difference']:.1e} |"
            )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/fewshot", help="LM-BFF k-shot data folder")
    parser.add_argument("--tasks", nargs="+", default=["SST-2", "cr"])
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    parser.add_argument("--test-size", type=int, default=None, help="cap the test sets (default: full)")
    parser.add_argument("--predict-size", type=int, default=64, help="test sentences timed per task and repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--icl-per-class",
        nargs="*",
        type=int,
        default=[1, 2],
        help="fixed demonstrations per class for the shared-prefix measurement (none: skip it)",
    )
    parser.add_argument("--out", default=str(RESULTS / "speed.json"))
    parser.add_argument("--table", action="store_true", help="print the README table of --out and exit")
    args = parser.parse_args(argv)
    if args.table:
        print(table(json.loads(Path(args.out).read_text())))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if "float32" not in args.paths:
        args.paths.insert(0, "float32")
    result = run(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(table(result))


if __name__ == "__main__":
    main()
