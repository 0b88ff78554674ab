"""One example per class: the calibrated prior with the training examples as demonstrations, on dev data.

    nice -n 5 env OMP_NUM_THREADS=2 python -m benchmarks.one_shot_demos_dev --data ../shared/data/fewshot

At 1 shot auto mode has nothing held out to choose by and keeps the calibrated prior (`fit.AUTO_MIN_SHOTS`), and
its demonstration candidates need two texts per class (a query never demonstrates itself), so the default equals
calibrated zero-shot. The one training example per class can still serve every *other* input as a demonstration:
LM-BFF's prompt with one solved example per class, scored by the label words and calibrated on the content-free
input carrying the same demonstrations (Zhao et al., 2021). For each of the grid's 8 tasks and 5 seeds the 1-shot
training split is drawn as the grid draws it (`benchmarks.grid.data`); the seed's 16-shot dev examples not drawn
as its 1-shot dev split are the evaluation set (never a test set). Compared, on the task's metric: the calibrated
prior (the default before this study), the same prompt with one demonstration set per input (auto mode's
`one_shot_candidate`: `filter="random"`, seeded, a dev text equal to a training text getting that example; one model
pass per input) calibrated and not. Results go to `benchmarks/results/one_shot_demos_dev.json` (resumable).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from . import dev_study


COLUMNS = ("calibrated_prior", "demonstrations_calibrated", "demonstrations_uncalibrated")


def score(task: str, logits, labels: list[int]) -> float:
    """The task's metric (accuracy, F1 for MRPC) of the argmax of `logits`."""
    from peft_dect.tasks import main_metric, task_metric

    pred = logits.argmax(-1).tolist()
    return task_metric(task, pred, labels)[main_metric(task)]


def run(args) -> dict:
    from benchmarks.grid import SEEDS, TASKS
    from benchmarks.grid.data import FULL_SHOTS, per_class_subsample
    from benchmarks.grid.methods import SmolLM
    from peft_dect.dect.prompt_search import DEMO_FILTER, one_shot_candidate
    from peft_dect.tasks import load_task

    out_path = Path(args.out)
    out = json.loads(out_path.read_text()) if out_path.exists() else {"cells": {}}
    lm = SmolLM(cache_dir=args.cache)
    for task in args.tasks or TASKS:
        for seed in args.seeds or SEEDS:
            key = f"{task}/{args.shots}/{seed}"
            if key in out["cells"]:
                continue
            lm.activate(task)
            full = load_task(task, args.data, k=FULL_SHOTS, seed=seed)
            train = full["train"].select(per_class_subsample(full["train"]["label"], args.shots, seed))
            drawn = set(per_class_subsample(full["validation"]["label"], args.shots, seed))
            dev = full["validation"].select([i for i in range(len(full["validation"])) if i not in drawn])
            labels = list(dev["label"])
            cell = {"task": task, "shots": args.shots, "seed": seed, "dev_rows": len(dev)}
            feats, _, _ = lm.features(task, dev)
            content_free, _, _ = lm.content_free(task)
            cell["calibrated_prior"] = score(task, feats.label_logits - content_free, labels)
            name = f"{task}-demos-{args.shots}-{seed}"
            cfg = lm.config(task)
            cfg.demonstrations = one_shot_candidate().demonstrations
            lm.peft_model.add_adapter(name, cfg)
            lm.peft_model.set_adapter(name)
            tuner = lm.peft_model.base_model
            tuner.use_cache_dir(args.cache)
            tuner.set_demonstrations(train, lm.tokenizer)
            for calibrate in (True, False):
                logits = tuner.zero_shot_logits(dev, lm.tokenizer, calibrate=calibrate)
                column = "demonstrations_calibrated" if calibrate else "demonstrations_uncalibrated"
                cell[column] = score(task, logits, labels)
            lm.peft_model.delete_adapter(name)
            out["cells"][key] = cell
            out["settings"] = {"data": args.data, "model": "SmolLM2-135M-Instruct", "filter": DEMO_FILTER}
            out_path.write_text(json.dumps(out, indent=1))
            print(key, {c: round(100 * cell[c], 1) for c in COLUMNS}, flush=True)
    return out


def table(out: dict) -> str:
    """Per task, the mean dev score over seeds of each column, in %, and how often demonstrations (calibrated) win."""
    cells = list(out["cells"].values())
    tasks = list(dict.fromkeys(c["task"] for c in cells))
    rows = ["| task (seeds) | " + " | ".join(COLUMNS) + " | seeds where calibrated demonstrations win |"]
    rows.append("|---" * (len(COLUMNS) + 2) + "|")
    means: dict[str, list[float]] = {c: [] for c in COLUMNS}
    for t in tasks:
        mine = [c for c in cells if c["task"] == t]
        per = {col: statistics.mean(100 * c[col] for c in mine) for col in COLUMNS}
        for col, v in per.items():
            means[col].append(v)
        wins = sum(c["demonstrations_calibrated"] > c["calibrated_prior"] for c in mine)
        rows.append(f"| {t} ({len(mine)}) | " + " | ".join(f"{v:.1f}" for v in per.values()) + f" | {wins} |")
    rows.append("| mean | " + " | ".join(f"{statistics.mean(v):.1f}" for v in means.values()) + " | |")
    return "\n".join(rows)


def main(argv=None) -> None:
    parser = dev_study.parser(__doc__, "one_shot_demos_dev.json")
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--seeds", nargs="+", type=int, default=None)
    dev_study.run_or_table(parser.parse_args(argv), run, table)


if __name__ == "__main__":
    main()
