"""Feature-extraction throughput of SmolLM2-135M with 1 process against N processes (accelerate launch).

    python -m benchmarks.extract_scaling --data ../shared/data/fewshot --processes 2

The parent run times one process (using every core) on the first `--n` SST-2 test sentences, then launches the
same extraction with `accelerate launch --multi_gpu --num_processes N` (torchrun; gloo on a CPU-only machine, each
process with cores/N threads), and records both throughputs and whether the features agree, in
`benchmarks/results/extract_scaling.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
import warnings
from pathlib import Path


RESULTS = Path(__file__).parent / "results"


def extract(data: str, n: int, out: str | None) -> dict:
    """Extract features of the first n SST-2 test sentences (cold cache); rank 0 saves them to `out`."""
    import torch
    from peft import get_peft_model
    from safetensors.torch import save_file

    from peft_dect import DecTConfig
    from peft_dect.backbone import distributed_state
    from peft_dect.embedded import load_smollm2
    from peft_dect.tasks import load_task

    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    state = distributed_state()
    model, tok = load_smollm2()
    words = {"negative": ["bad"], "positive": ["great"]}
    cfg = DecTConfig(template="{text_a} In summary, it was {mask}", label_words=words)
    bb = get_peft_model(model, cfg).base_model.backbone(tok)
    bb.show_progress = False
    texts = load_task("SST-2", data, seed=13)["test"]["text_a"][:n]
    if state is not None:
        state.wait_for_everyone()
    start = time.perf_counter()
    feats = bb.extract(texts)
    if state is not None:
        state.wait_for_everyone()
    seconds = time.perf_counter() - start
    if out and (state is None or state.is_main_process):
        save_file({"hidden": feats.hidden, "label_logits": feats.label_logits}, out)
        Path(out + ".json").write_text(json.dumps({"seconds": seconds, "threads": torch.get_num_threads()}))
    return {"seconds": seconds, "threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/fewshot")
    parser.add_argument("--n", type=int, default=256, help="sentences to extract")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        extract(args.data, args.n, args.worker)
        return

    import torch
    from safetensors.torch import load_file

    cores = os.cpu_count() or 1
    single_out = str(RESULTS / ".single.safetensors")
    RESULTS.mkdir(parents=True, exist_ok=True)
    single = extract(args.data, args.n, single_out)
    multi_out = str(RESULTS / ".multi.safetensors")
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // args.processes)), "HF_HUB_OFFLINE": "1"}
    cmd = [
        "accelerate",
        "launch",
        "--multi_gpu",
        "--num_processes",
        str(args.processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        "29533",
        "-m",
        "benchmarks.extract_scaling",
        "--data",
        args.data,
        "--n",
        str(args.n),
        "--worker",
        multi_out,
    ]
    subprocess.run(cmd, check=True, env=env, cwd=Path(__file__).parent.parent)
    multi = json.loads(Path(multi_out + ".json").read_text())
    a, b = load_file(single_out), load_file(multi_out)
    result = {
        "benchmark": "extract_scaling",
        "model": "SmolLM2-135M-Instruct",
        "sentences": args.n,
        "cores": cores,
        "one_process": {
            "threads": single["threads"],
            "seconds": single["seconds"],
            "sentences_per_second": args.n / single["seconds"],
        },
        f"{args.processes}_processes": {
            "threads_each": multi["threads"],
            "seconds": multi["seconds"],
            "sentences_per_second": args.n / multi["seconds"],
        },
        "speedup": single["seconds"] / multi["seconds"],
        "max_abs_feature_difference": float((a["hidden"] - b["hidden"]).abs().max()),
        "versions": {"torch": torch.__version__},
    }
    for path in (single_out, multi_out, multi_out + ".json", single_out + ".json"):
        Path(path).unlink(missing_ok=True)
    (RESULTS / "extract_scaling.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
