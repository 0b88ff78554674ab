"""Streaming prediction's memory against the number of texts: peak RSS of `predict_file` over growing inputs.

    nice -n 5 python -m benchmarks.stream_bench --model tiny --counts 1000 10000 100000
    nice -n 5 python -m benchmarks.stream_bench --model smollm2 --counts 300 1000 3000
    python -m benchmarks.stream_bench --table

Each count runs in a fresh process (peak RSS is a high-water mark): load the model, fit a DecT adapter on 16
synthetic sentiment texts per class, write N synthetic short texts to a .txt file and predict it with
`peft_dect.stream.predict_file` (JSON Lines out, flushed per batch). Recorded per run: RSS after loading and fitting
(the model and the runtime), peak RSS while streaming (the peak is reset before, Linux's clear_refs), their
difference (what streaming adds), the model's
parameter bytes, RSS sampled every `--sample-every` texts while streaming, and texts per second. `tiny` is a random
2-layer Llama (hidden 64) on SmolLM2's tokenizer, fast enough for 100,000 texts here; `smollm2` is the embedded
SmolLM2-135M-Instruct. Results are merged into `benchmarks/results/stream.json` by (model, count).
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path


RESULTS = Path(__file__).parent / "results" / "stream.json"
TEMPLATE = "{text_a} In summary, it was {mask}"
LABEL_WORDS = {"negative": ["bad"], "positive": ["great"]}
POSITIVE = ["great", "lovely", "moving", "superb", "fun", "warm", "bright", "clever"]
NEGATIVE = ["dull", "boring", "weak", "messy", "flat", "tedious", "cold", "clumsy"]
FILLER = ["the", "film", "story", "cast", "plot", "music", "was", "and", "a", "very", "quite", "ending"]


def synthetic(n: int, seed: int) -> tuple[list[str], list[int]]:
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        label = i % 2
        words = rng.sample(FILLER, 5) + rng.sample(POSITIVE if label else NEGATIVE, 2)
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(label)
    return texts, labels


def status_mb(field: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def rss_mb() -> float:
    return status_mb("VmRSS")


def peak_mb() -> float:
    """Peak RSS since the process started, or since `reset_peak` (Linux's VmHWM)."""
    return status_mb("VmHWM")


def reset_peak() -> None:
    """Start the peak RSS again from the current RSS (Linux: 5 to /proc/self/clear_refs)."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def load(name: str):
    from peft_dect.embedded import load_smollm2, smollm2_gguf

    if name == "smollm2":
        return load_smollm2()
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder, file = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256, tie_word_embeddings=True,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval(), tokenizer


def one_run(args) -> dict:
    """One count in this process (the --child mode)."""
    import torch
    from peft import get_peft_model

    from peft_dect import DecTConfig
    from peft_dect.stream import predict_file

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model, tokenizer = load(args.model)
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    texts, labels = synthetic(32, seed=1)
    peft_model = get_peft_model(model, DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS, mode="faithful"))
    peft_model.fit({"sentence": texts, "label": labels}, tokenizer=tokenizer, show_progress=False)
    load_seconds = time.perf_counter() - t0
    gc.collect()
    rss_loaded, peak_loaded = rss_mb(), peak_mb()
    reset_peak()  # from here on, the peak is that of streaming
    samples = []
    with tempfile.TemporaryDirectory() as tmp:
        source, out = Path(tmp, "in.txt"), Path(tmp, "out.jsonl")
        with open(source, "w", encoding="utf-8") as fh:  # written in pieces: the list of texts is never whole
            for start in range(0, args.count, 10_000):
                part, _ = synthetic(min(10_000, args.count - start), seed=1000 + start)
                fh.write("".join(t + "\n" for t in part))
        clf = peft_model.base_model
        cache_rows = len(clf.backbone().cache)
        original = clf.checked_logits
        seen = {"n": 0}

        def sampled(*a, **k):  # RSS every --sample-every texts, while streaming
            logits = original(*a, **k)
            seen["n"] += logits.shape[0]
            if seen["n"] // args.sample_every != (seen["n"] - logits.shape[0]) // args.sample_every:
                samples.append({"texts": seen["n"], "rss_mb": round(rss_mb(), 1)})
            return logits

        clf.checked_logits = sampled
        t1 = time.perf_counter()
        summary = predict_file(clf, source, out, batch_size=args.batch_size, show_progress=False)
        seconds = time.perf_counter() - t1
        lines = sum(1 for _ in open(out, "rb"))
        cache_rows_after = len(clf.backbone().cache)
    peak = peak_mb()
    return {
        "model": args.model,
        "count": args.count,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "written": summary["written"],
        "output_lines": lines,
        "model_mb": round(model_bytes / 2**20, 1),
        "rss_after_load_and_fit_mb": round(rss_loaded, 1),
        "peak_while_loading_mb": round(peak_loaded, 1),
        "peak_rss_mb": round(peak, 1),
        "stream_added_mb": round(peak - rss_loaded, 1),
        "peak_over_model_mb": round(peak - model_bytes / 2**20, 1),
        "feature_cache_rows_before": cache_rows,
        "feature_cache_rows_after": cache_rows_after,
        "texts_per_second": round(args.count / seconds, 1),
        "stream_seconds": round(seconds, 1),
        "load_and_fit_seconds": round(load_seconds, 1),
        "rss_samples": samples,
    }


def table(results: dict) -> str:
    rows = [
        "| model | texts | model MB | RSS after load+fit MB | peak RSS MB | added by streaming MB | texts/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(results["runs"], key=lambda r: (r["model"], r["count"])):
        rows.append(
            f"| {r['model']} | {r['count']:,} | {r['model_mb']:.0f} | {r['rss_after_load_and_fit_mb']:.0f} | "
            f"{r['peak_rss_mb']:.0f} | {r['stream_added_mb']:.0f} | {r['texts_per_second']:.0f} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    parser.add_argument("--counts", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)  # --child: the one count of this process
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sample-every", type=int, default=1000)
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--table", action="store_true", help="print the table of the results file")
    args = parser.parse_args(argv)
    if args.table:
        print(table(json.loads(Path(args.out).read_text())))
        return
    if args.child:
        print(json.dumps(one_run(args)))
        return
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {"runs": []}
    for count in args.counts:
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.stream_bench",
            "--child",
            "--model",
            args.model,
            "--count",
            str(count),
        ]
        cmd += ["--batch-size", str(args.batch_size), "--threads", str(args.threads)]
        cmd += ["--sample-every", str(args.sample_every)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"count {count} failed:\n{done.stderr[-3000:]}")
        run = json.loads(done.stdout.strip().splitlines()[-1])
        results["runs"] = [r for r in results["runs"] if (r["model"], r["count"]) != (args.model, count)] + [run]
        results["machine"] = {"platform": platform.platform(), "python": platform.python_version()}
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"{args.model} {count}: peak {run['peak_rss_mb']} MB, added {run['stream_added_mb']} MB", flush=True)
    print(table(results))


if __name__ == "__main__":
    main()
