"""LM-BFF prompt-based fine-tuning with LoRA on SmolLM2-135M-Instruct, without and with demonstrations.

    nice -n 5 env OMP_NUM_THREADS=1 python -m benchmarks.lmbff_ft_bench --data ../shared/data/fewshot
    python -m benchmarks.lmbff_ft_bench --table

SST-2, CR, MPQA, RTE and MRPC, 16-shot, seeds 13 21 42 87 100, each task's template and label words from
`peft_dect.tasks` (causal-LM form). Each run trains a LoRA adapter with `transformers.Trainer` through
`LMBFFModel`, evaluates the seed's dev split every `--eval-every` steps and keeps the best adapter (LM-BFF's model
selection on dev), then measures the task metric on a fixed seeded sample of the test set (`--test-cap`).

Budget, sized for 2 CPU cores shared by six sessions (each process got 10-20 % of a core while this ran): 24 steps
of batch 8 (6 epochs over the 32 training examples), learning rate 1e-3 with linear decay, LoRA rank 8 (alpha 16)
on q_proj/v_proj of the top 8 of 30 layers, so that backward stops there; dev evaluation every 8 steps, the best
of the three kept. The learning rate was chosen on the dev split of SST-2 seed 13
(`results/lmbff_ft_dev.json`: 1e-4 stays at 50 % dev accuracy for 48 steps, 4e-4 reaches 62.5 % at 48, 1e-3
reaches 71.9 % at 16 and 24); the step count and rank are what the machine allowed, not tuned. The paper's 1000
steps would take hours per run here. Test sets are a fixed seeded sample of `--test-cap` examples per task.

Results are written to `--out` after every run (`benchmarks/results/lmbff_ft.json` without demonstrations and
`lmbff_ft_demos.json` with them, run as two processes); a rerun skips the runs already there. `--table` reads both.
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
TASKS = ("SST-2", "cr", "mpqa", "RTE", "MRPC")
SEEDS = (13, 21, 42, 87, 100)
VARIANTS = ("lora", "lora+demos")

logger = logging.getLogger("lmbff_ft_bench")


def test_sample(dataset, cap: int, seed: int = 0):
    """A fixed seeded sample of at most `cap` test examples (the same for every run of a task)."""
    if cap <= 0 or len(dataset) <= cap:
        return dataset
    return dataset.select(sorted(random.Random(seed).sample(range(len(dataset)), cap)))


def run_one(base, tokenizer, task: str, seed: int, variant: str, args) -> dict:
    import torch
    from peft import LoraConfig
    from transformers import Trainer, TrainingArguments

    from peft_dect.lmbff import BestOnDevCallback, LMBFFConfig, LMBFFModel
    from peft_dect.tasks import get_task, load_task

    spec = get_task(task)
    data = load_task(task, args.data, k=16, seed=seed)
    layers = base.config.num_hidden_layers
    lora = LoraConfig(
        r=args.rank,
        lora_alpha=2 * args.rank,
        lora_dropout=0.0,
        target_modules=["q_proj", "v_proj"],
        layers_to_transform=list(range(layers - args.top_layers, layers)) if args.top_layers else None,
    )
    demos = {"num_sets": args.demo_sets, "seed": seed} if variant == "lora+demos" else None
    config = LMBFFConfig(
        template=spec.template_for("causal"),
        label_words=spec.label_words,
        peft_config=lora,
        demonstrations=demos,
        text_column="text_a",
        text_pair_column="text_b",
    )
    torch.manual_seed(seed)
    model = LMBFFModel(base, tokenizer, config, train_dataset=data["train"], show_progress=False)
    train = model.prepare_dataset(data["train"])
    dev = model.prepare_dataset(data["validation"])
    best = BestOnDevCallback(metric=spec.metric)
    targs = TrainingArguments(
        output_dir=str(Path(args.work) / f"{task}-{seed}-{variant}"),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=16,
        learning_rate=args.lr,
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        eval_strategy="steps",
        eval_steps=args.eval_every,
        save_strategy="no",
        logging_steps=args.eval_every,
        report_to=[],
        seed=seed,
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = Trainer(
        model=model,
        args=targs,
        train_dataset=train,
        eval_dataset=dev,
        data_collator=model.collate,
        compute_metrics=model.trainer_metrics(spec.metric),
        callbacks=[best],
    )
    start = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - start
    record = {
        "task": spec.name,
        "seed": seed,
        "variant": variant,
        "metric": spec.metric,
        "lr": args.lr,
        "rank": args.rank,
        "steps": args.steps,
        "best_dev": best.best_value,
        "best_step": best.best_step,
        "dev_curve": best.history,
        "train_seconds": train_seconds,
    }
    if not args.dev_only:  # the dev-split study behind the budget never reads a test set
        test = test_sample(data["test"], args.test_cap)
        start = time.perf_counter()
        metrics = model.evaluate(test, metric=spec.metric)
        record.update(
            test=metrics[spec.metric],
            test_metrics=metrics,
            test_examples=len(test),
            test_seconds=time.perf_counter() - start,
        )
    return record, model.model.unload()  # the base model without the LoRA layers, for the next run


def load_results(path: Path) -> dict:
    if path.is_file():
        return json.loads(path.read_text())
    return {"runs": []}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/fewshot")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--eval-every", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--top-layers", type=int, default=8)
    parser.add_argument("--demo-sets", type=int, default=1, help="demonstration sets averaged at test time")
    parser.add_argument("--test-cap", type=int, default=100)
    parser.add_argument("--out", default=str(RESULTS / "lmbff_ft.json"))
    parser.add_argument("--work", default="/tmp/lmbff_ft_bench")
    parser.add_argument("--dev-only", action="store_true", help="budget study: train and select on dev, no test")
    parser.add_argument("--table", action="store_true", help="print the README table from the result file")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.table:
        runs = [
            r
            for path in (RESULTS / "lmbff_ft.json", RESULTS / "lmbff_ft_demos.json")
            for r in load_results(path)["runs"]
        ]
        print(table({"runs": runs}))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import torch

    from peft_dect.embedded import load_smollm2

    results = load_results(out)
    results["settings"] = {
        k: v for k, v in vars(args).items() if k not in ("data", "out", "work", "table", "tasks", "seeds", "variants")
    }
    results["machine"] = f"{platform.machine()}, {torch.get_num_threads()} torch thread(s)"

    def key(task, seed, variant, lr, rank, steps):
        return (task.lower(), seed, variant, lr, rank, steps)

    done = {key(r["task"], r["seed"], r["variant"], r["lr"], r["rank"], r["steps"]) for r in results["runs"]}
    base, tokenizer = load_smollm2()
    for variant in args.variants:
        for seed in args.seeds:
            for task in args.tasks:
                from peft_dect.tasks import get_task

                name = get_task(task).name
                if key(name, seed, variant, args.lr, args.rank, args.steps) in done:
                    continue
                record, base = run_one(base, tokenizer, task, seed, variant, args)
                logger.info("%s", json.dumps(record))
                results["runs"].append(record)
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(results, indent=1))
    if not args.dev_only:
        print(table(results))


def table(results: dict) -> str:
    """Markdown rows: task metric mean +- std over seeds (x100) and mean training wall time per run."""
    rows = ["| method | " + " | ".join(t for t in TASKS) + " | train s/run |", "|---" * (len(TASKS) + 2) + "|"]
    for variant in VARIANTS:
        runs = [r for r in results.get("runs", []) if r["variant"] == variant]
        if not runs:
            continue
        cells = []
        for task in TASKS:
            vals = [100 * r["test"] for r in runs if r["task"].lower() == task.lower()]
            if not vals:
                cells.append("-")
                continue
            std = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cells.append(f"{statistics.mean(vals):.1f} ± {std:.1f} (n={len(vals)})")
        seconds = statistics.mean(r["train_seconds"] for r in runs)
        label = "LM-BFF LoRA" if variant == "lora" else "LM-BFF LoRA + demonstrations"
        rows.append(f"| {label} | " + " | ".join(cells) + f" | {seconds:.0f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
