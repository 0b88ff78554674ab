"""Requests per input of black-box DecT through a real llama.cpp server, before and after issue 18's changes.

    nice -n 5 env OMP_NUM_THREADS=1 python -m benchmarks.remote_requests --data ../shared/data/fewshot --seeds 13 21 42
    python -m benchmarks.remote_requests --table

One llama-cpp-python server (127.0.0.1) serves the SmolLM2-135M-Instruct GGUF file. Per seed of SST-2 16-shot, two
black-box DecT fits (auto mode; the seed's dev split given to the choice), each with an empty request cache:
`before`, the client as it was (`label_logprobs=None`: top 20 candidates, one more request per label word outside
them; `batch_size=1`), and `after`, the defaults of now plus `batch_size="auto"` (1,000 candidates asked for, so
that one request scores both classes; a list of prompts tried once: this server refuses lists, so it falls back to
one prompt per request). Recorded: requests by kind, requests per input (train and dev inputs and the content-free
prompt counted), per training example, wall seconds, and test accuracy on a fixed seeded sample of `--test-cap`
sentences with the agreement of the two fits' predictions. Results go to `benchmarks/results/remote_requests.json`.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from pathlib import Path


RESULTS = Path(__file__).parent / "results" / "remote_requests.json"
TEMPLATE = "{text_a} In summary, it was {mask}"
LABEL_WORDS = {"negative": ["bad"], "positive": ["great"]}
CLIENTS = {"before": {"label_logprobs": None, "batch_size": 1}, "after": {"batch_size": "auto"}}


def test_sample(dataset, cap: int):
    if cap <= 0 or len(dataset) <= cap:
        return dataset
    return dataset.select(sorted(random.Random(0).sample(range(len(dataset)), cap)))


def run(args) -> dict:
    from peft_dect import DecTConfig
    from peft_dect.remote import BlackBoxDecT, OpenAIEndpoint
    from peft_dect.remote.llama_server import llama_cpp_server
    from peft_dect.tasks import load_task

    out_path = Path(args.out)
    results = json.loads(out_path.read_text()) if out_path.exists() else {"runs": []}
    with llama_cpp_server(threads=args.server_threads) as url:
        for seed in args.seeds:
            if any(r["seed"] == seed for r in results["runs"]):
                continue
            data = load_task("SST-2", args.data, k=16, seed=seed)
            test = test_sample(data["test"], args.test_cap)
            run = {"seed": seed, "test_examples": len(test)}
            predictions = {}
            for name, options in CLIENTS.items():
                endpoint = OpenAIEndpoint(
                    url, "smollm2", max_concurrency=args.concurrency, show_progress=False, **options
                )
                clf = BlackBoxDecT(DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS), endpoint)
                t0 = time.perf_counter()
                fit = clf.fit(data["train"], data["validation"])
                fit_seconds = time.perf_counter() - t0
                inputs = fit["model_passes"]  # train + dev + the content-free prompt, each sent once
                before_test = endpoint.stats.copy()
                t1 = time.perf_counter()
                predictions[name] = clf.predict(test)
                test_cost = endpoint.stats.since(before_test)
                run[name] = {
                    "fit_inputs": inputs,
                    "train_examples": len(data["train"]),
                    "requests": fit["requests"],
                    "completion_requests": fit["completion_requests"],
                    "label_word_requests": fit["label_word_requests"],
                    "embedding_requests": fit["embedding_requests"],
                    "requests_per_input": round(fit["requests"] / inputs, 3),
                    "requests_per_training_example": round(fit["requests"] / len(data["train"]), 3),
                    "fit_seconds": round(fit_seconds, 1),
                    "test_requests_per_input": round(test_cost.requests / len(test), 3),
                    "test_seconds": round(time.perf_counter() - t1, 1),
                    "accuracy": clf.evaluate(test)["accuracy"],  # answers cached: no new request
                    "mode": fit["mode"],
                    "lam": fit["lam"],
                    "batching": endpoint.batching,
                }
            agree = [a == b for a, b in zip(predictions["before"], predictions["after"])]
            run["agreement"] = sum(agree) / len(agree)
            results["runs"].append(run)
            results["machine"] = {"platform": platform.platform(), "python": platform.python_version()}
            out_path.write_text(json.dumps(summarise(results), indent=2) + "\n")
            print(f"seed {seed}: " + ", ".join(f"{n} {run[n]['requests_per_input']} req/input" for n in CLIENTS))
    return summarise(results)


def summarise(results: dict) -> dict:
    runs = results["runs"]
    summary = {}
    for name in CLIENTS:
        summary[name] = {
            key: round(statistics.mean(r[name][key] for r in runs), 3)
            for key in ("requests_per_input", "requests_per_training_example", "test_requests_per_input", "accuracy")
        } | {"fit_seconds": round(statistics.median(r[name]["fit_seconds"] for r in runs), 1)}
    summary["agreement"] = round(statistics.mean(r["agreement"] for r in runs), 3)
    return results | {"summary": summary, "seeds": [r["seed"] for r in runs]}


def table(results: dict) -> str:
    rows = [
        "| client | requests / fit input | requests / training example | requests / test input | accuracy | fit s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in CLIENTS:
        s = results["summary"][name]
        rows.append(
            f"| {name} | {s['requests_per_input']:.2f} | {s['requests_per_training_example']:.2f} | "
            f"{s['test_requests_per_input']:.2f} | {100 * s['accuracy']:.1f} | {s['fit_seconds']:.0f} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="LM-BFF k-shot folder (default: the packaged SST-2 split)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[13, 21, 42])
    parser.add_argument("--test-cap", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--server-threads", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--table", action="store_true")
    args = parser.parse_args(argv)
    if args.table:
        print(table(json.loads(Path(args.out).read_text())))
        return
    if args.data is None:
        from peft_dect.tasks import packaged_data_dir

        args.data = packaged_data_dir()
    logging_setup()
    print(table(run(args)))


def logging_setup() -> None:
    import logging

    logging.basicConfig(level=logging.WARNING)


if __name__ == "__main__":
    main()
