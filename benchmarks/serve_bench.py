"""`peft-dect serve` on SmolLM2-135M-Instruct: throughput and latency with and without micro-batching.

    python -m benchmarks.serve_bench --data /work/shared/data/fewshot

SST-2 and CR 16-shot DecT adapters (seed 13, auto mode; a third, SST-2 seed 21 in faithful mode, for the memory
figure) are fitted and saved, then served together on one copy of SmolLM2 by a real uvicorn on 127.0.0.1.
`--texts` test sentences (half SST-2 for the SST-2 adapter, half CR for the CR adapter, interleaved) are sent by
1, 4 and 16 concurrent clients, one text per request, to a server with micro-batching and to one without (both on
the same model); the reference is in-process batched `predict` over the same texts, one adapter after the other.
SST-2 and CR share their template (and label words), so the batching server runs both adapters' requests in one
backbone batch (`shared_pass` in the results). For each client count the
reference, the batched and the unbatched runs follow each other, so the shared machine's changing load affects the
three alike; ratios are taken within each such triple. The server keeps no features (`cache_max_bytes=1`), so no
text is served from memory. The clients run in a child process (stdlib HTTP, no torch). RSS is read after
classifying with 1, 2 and 3 adapters (`--rss-children` adds the peak RSS of fresh processes). Results go to
`benchmarks/results/serve.json`; `--table` prints the README table from that file.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import json
import logging
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


RESULTS = Path(__file__).parent / "results"
OUT = RESULTS / "serve.json"
TASKS = {"sst2": "SST-2", "cr": "cr"}
CLIENTS = (1, 4, 16)


def fit_adapters(model, tokenizer, data: str, folder: Path, seeds: dict[str, int]) -> dict[str, list[str]]:
    """Fit and save one DecT adapter per (name, task seed) (auto mode; faithful for a third, only for the memory
    measurement); returns the test texts of each task."""
    from peft import get_peft_model

    from peft_dect import DecTConfig
    from peft_dect.tasks import get_task, load_task

    tests = {}
    for name, seed in seeds.items():
        task = TASKS[name.split("-")[0]]
        spec = get_task(task)
        split = load_task(task, data, k=16, seed=seed)
        config = DecTConfig(
            template=spec.template_for("causal"),
            label_words=spec.label_words,
            text_column="text_a",
            mode="faithful" if name.endswith("seed21") else "auto",
        )
        peft_model = get_peft_model(model, config)
        peft_model.fit(split["train"], tokenizer=tokenizer, eval_dataset=split["validation"], show_progress=False)
        peft_model.save_pretrained(folder / name)
        tests[name] = list(split["test"]["text_a"])
        model = peft_model.unload()  # the bare model again for the next adapter
    return tests


class Server:
    """uvicorn in a thread on an ephemeral port of 127.0.0.1."""

    def __init__(self, app) -> None:
        import uvicorn

        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def load(port: int, jobs: list[tuple[str, str]], clients: int) -> dict:
    """Send `jobs` ((adapter, text), one per request) from `clients` threads; throughput and latency."""
    latencies: list[float] = []
    failures: list[int] = []
    lock = threading.Lock()
    queue = list(reversed(jobs))

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while True:
            with lock:
                if not queue:
                    break
                adapter, text = queue.pop()
            body = json.dumps({"inputs": text})
            start = time.perf_counter()
            conn.request("POST", f"/models/{adapter}", body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            with lock:
                latencies.append(time.perf_counter() - start)
                if response.status != 200:
                    failures.append(response.status)
        conn.close()

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(client) for _ in range(clients)]:
            f.result()
    seconds = time.perf_counter() - start
    ordered = sorted(latencies)
    return {
        "clients": clients,
        "requests": len(jobs),
        "failed": len(failures),
        "seconds": seconds,
        "texts_per_second": len(jobs) / seconds,
        "p50_ms": 1000 * statistics.median(ordered),
        "p95_ms": 1000 * ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
    }


def client_child(args) -> None:
    """The load generator in its own process (no torch, no GIL shared with the server): jobs from a JSON file."""
    jobs = [tuple(job) for job in json.loads(Path(args.jobs).read_text())]
    print(json.dumps(load(args.client, jobs, args.clients)))


def remote_load(port: int, jobs: list[tuple[str, str]], clients: int, workdir: Path) -> dict:
    """`load` run by a child process."""
    path = workdir / "jobs.json"
    path.write_text(json.dumps(jobs))
    command = [sys.executable, "-m", "benchmarks.serve_bench", "--client", str(port), "--clients", str(clients)]
    out = subprocess.run(command + ["--jobs", str(path)], capture_output=True, text=True, check=True, timeout=1200)
    return json.loads(out.stdout.strip().splitlines()[-1])


def batch_totals(port: int) -> tuple[int, float]:
    """(backbone batches, texts in them) so far, read from the server's `/metrics` as a user's scraper would."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    values = dict(line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("peft_dect_batch_size_"))
    return int(values.get("peft_dect_batch_size_count", 0)), float(values.get("peft_dect_batch_size_sum", 0.0))


def rss_mb() -> float:
    """The resident set size of this process now, in MB (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_child(args) -> None:
    """Peak RSS of a server process holding `args.rss` adapters after classifying a few texts with each."""
    from peft_dect.embedded import load_smollm2
    from peft_dect.serving import AdapterRegistry, Query

    model, tokenizer = load_smollm2()
    registry = AdapterRegistry(model, tokenizer, cache_max_bytes=1)
    names = sorted(p.name for p in Path(args.adapters).iterdir())[: args.rss]
    for name in names:
        registry.add(str(Path(args.adapters) / name))
    texts = ["a gorgeous, moving film", "a dull and tedious plot"] * 8
    for name in names:
        registry.run(name, [Query(texts)])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"adapters": len(names), "peak_rss_mb": round(peak, 1)}))


def run(args) -> dict:
    import torch

    from peft_dect.embedded import load_smollm2
    from peft_dect.serving import AdapterRegistry, ServeSettings, create_app

    torch.manual_seed(0)
    started = time.perf_counter()
    model, tokenizer = load_smollm2()
    logging.info("SmolLM2 loaded in %.0f s", time.perf_counter() - started)
    workdir = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    seeds = {"sst2": 13, "cr": 13, "sst2-seed21": 21}
    tests = fit_adapters(model, tokenizer, args.data, workdir, seeds)
    half = args.texts // 2
    jobs = [job for pair in zip(*[[(n, t) for t in tests[n][:half]] for n in ("sst2", "cr")]) for job in pair]

    registry = AdapterRegistry(model, tokenizer, cache_max_bytes=1)  # keeps no features: nothing served from memory
    registry.add(str(workdir / "sst2"))
    peft_model = registry.peft_model
    peft_model.predict(tests["sst2"][:8], tokenizer=tokenizer, show_progress=False)  # warm-up
    memory = [{"adapters": 1, "rss_mb": round(rss_mb(), 1)}]
    for name in ("cr", "sst2-seed21"):
        registry.add(str(workdir / name))
        peft_model.set_adapter(name)
        peft_model.predict(tests[name.split("-")[0]][:8], tokenizer=tokenizer, show_progress=False)
        memory.append({"adapters": len(registry.names), "rss_mb": round(rss_mb(), 1)})
    logging.info("RSS: %s", memory)

    def reference() -> float:
        start = time.perf_counter()
        for name in ("sst2", "cr"):
            peft_model.set_adapter(name)
            peft_model.predict(tests[name][:half], tokenizer=tokenizer, show_progress=False)
        return time.perf_counter() - start

    runs, references = [], []
    on = ServeSettings(max_batch=args.max_batch, max_wait=args.max_wait_ms / 1000, max_queue=4096)
    off = ServeSettings(batching=False, max_queue=4096)
    with Server(create_app(registry, on)) as batched, Server(create_app(registry, off)) as alone:
        for server in (batched, alone):
            load(server.port, jobs[:4], 2)  # warm-up
        for clients in CLIENTS:  # reference, on and off in turn: the shared machine's load drifts across all alike
            seconds = reference()
            references.append({"clients": clients, "seconds": seconds, "texts_per_second": len(jobs) / seconds})
            logging.info("in-process predict: %.2f texts/s", len(jobs) / seconds)
            for batching, server in ((True, batched), (False, alone)):
                batches, texts = batch_totals(server.port)
                result = remote_load(server.port, jobs, clients, workdir) | {"batching": batching}
                after = batch_totals(server.port)
                result["backbone_batches"] = after[0] - batches
                result["mean_batch_size"] = (after[1] - texts) / max(1, after[0] - batches)
                logging.info("%s", result)
                runs.append(result)
    ref_seconds = statistics.median(r["seconds"] for r in references)
    rss = []
    if args.rss_children:
        for count in (1, 3):
            out = subprocess.run(
                [sys.executable, "-m", "benchmarks.serve_bench", "--rss", str(count), "--adapters", str(workdir)],
                capture_output=True,
                text=True,
                check=True,
                timeout=600,
            )
            rss.append(json.loads(out.stdout.strip().splitlines()[-1]))
            logging.info("%s", rss[-1])
    import peft_dect

    return {
        "benchmark": "serve_bench",
        "model": "SmolLM2-135M-Instruct (embedded GGUF, float32, CPU)",
        "adapters": {n: f"{TASKS[n.split('-')[0]]} 16-shot seed {seed}" for n, seed in seeds.items()},
        "texts": len(jobs),
        "texts_per_request": 1,
        "max_batch": args.max_batch,
        "max_wait_ms": args.max_wait_ms,
        "shared_pass": registry.group_of("sst2") == registry.group_of("cr"),
        "reference": {"in_process_seconds": ref_seconds, "texts_per_second": len(jobs) / ref_seconds},
        "references": references,
        "runs": runs,
        "rss_after_serving": memory,
        "peak_rss": rss,
        "machine": {"platform": platform.platform(), "threads": torch.get_num_threads(), "torch": torch.__version__},
        "versions": {"peft_dect": peft_dect.__version__},
        "wall_seconds": time.perf_counter() - started,
    }


def table(result: dict) -> str:
    by = {(r["batching"], r["clients"]): r for r in result["runs"]}
    refs = {r["clients"]: r["texts_per_second"] for r in result["references"]}
    lines = [
        "| clients | micro-batching: texts/s | p50 / p95 ms | no batching: texts/s | p50 / p95 ms "
        "| in-process `predict`: texts/s | batching vs in-process | batching vs none | texts per batch |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for clients in CLIENTS:
        on, off, ref = by[(True, clients)], by[(False, clients)], refs[clients]
        per_batch = f"{on['mean_batch_size']:.1f}" if "mean_batch_size" in on else "–"  # older result files: none
        lines.append(
            f"| {clients} | {on['texts_per_second']:.2f} | {on['p50_ms']:.0f} / {on['p95_ms']:.0f} "
            f"| {off['texts_per_second']:.2f} | {off['p50_ms']:.0f} / {off['p95_ms']:.0f} | {ref:.2f} "
            f"| {100 * on['texts_per_second'] / ref:.0f} % | {on['texts_per_second'] / off['texts_per_second']:.1f}x "
            f"| {per_batch} |"
        )
    failed = sum(r["failed"] for r in result["runs"])
    lines.append(f"\n{result['texts']} texts per run, one per request; failed requests: {failed}.")
    memory = ", ".join(f"{m['adapters']} adapter(s) {m['rss_mb']:.0f} MB" for m in result["rss_after_serving"])
    lines.append(f"RSS of the serving process after classifying with each adapter: {memory}.")
    if result["peak_rss"]:
        rss = ", ".join(f"{r['adapters']} adapter(s) {r['peak_rss_mb']:.0f} MB" for r in result["peak_rss"])
        lines.append(f"Peak RSS of a server process: {rss}.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/fewshot", help="folder of the k-shot tasks (LM-BFF layout)")
    parser.add_argument("--texts", type=int, default=64, help="test texts sent per run (half per adapter)")
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--max-wait-ms", type=float, default=10.0)
    parser.add_argument(
        "--rss-children", action="store_true", help="also the peak RSS of fresh processes with 1 and 3 adapters"
    )
    parser.add_argument("--table", action="store_true", help="print the README table from the results file")
    parser.add_argument("--rss", type=int, help=argparse.SUPPRESS)  # the child process of the RSS measurement
    parser.add_argument("--adapters", help=argparse.SUPPRESS)
    parser.add_argument("--client", type=int, help=argparse.SUPPRESS)  # the load generator: the server's port
    parser.add_argument("--clients", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--jobs", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client_child(args)
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("peft_dect.serving").setLevel(logging.WARNING)
    if args.rss:
        rss_child(args)
        return
    if args.table:
        print(table(json.loads(OUT.read_text())))
        return
    result = run(args)
    RESULTS.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))


if __name__ == "__main__":
    main()
