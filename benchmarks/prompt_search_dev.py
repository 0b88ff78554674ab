"""Auto mode's prompt candidates on dev data: the template alone, with one demonstration set, and the choice between.

    nice -n 5 env OMP_NUM_THREADS=2 python -m benchmarks.prompt_search_dev --data ../shared/data/fewshot

For each of the grid's 8 tasks and the seeds given, the k-shot training split is drawn from the seed's 16-shot
training file as the grid draws it (`benchmarks.grid.data`); the fit sees that split alone (auto mode's
cross-validation folds, no eval split) and is scored on the seed's whole 16-shot dev file, which it never sees (no
test data). Each candidate is fitted on its own with `budget=1` (SmolLM2, the grid's templates and label words, the
task's metric); the table also shows what a choice between them by held-out score (cross-validation) gives: the
higher one (ties to either), and the default's rule (`peft_dect.dect.prompt_search.best`: demonstrations unless the
template beats them by PROMPT_MARGIN). The default budget and the margin were chosen by this study; results go to
`benchmarks/results/prompt_search_dev.json` (resumable).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from . import dev_study


CANDIDATES = ("template", "demonstrations")


def fit_and_score(lm, task: str, name: str, demos, train, dev, metric, chat: bool = False) -> tuple[float, float]:
    """(held-out score of the fit, dev score) of one candidate (`chat`: wrapped in the chat template) fitted on
    `train` alone."""
    from peft_dect.tasks import main_metric, task_metric

    peft_model = lm.peft_model
    if name not in peft_model.peft_config:
        cfg = lm.config(task)
        cfg.budget, cfg.demonstrations, cfg.chat_template = 1, demos, chat
        peft_model.add_adapter(name, cfg)
    peft_model.set_adapter(name)
    tuner = peft_model.base_model
    tuner.reset_adapter()
    report = peft_model.fit(train, lm.tokenizer, batch_size=lm.batch_size, show_progress=False, metric=metric)
    pred = tuner.predict_logits(dev).argmax(-1).tolist()
    score = task_metric(task, pred, dev["label"])[main_metric(task)]
    key = report.get("selected_by", "accuracy")
    return float(report.get(f"heldout_{key}", report["heldout_accuracy"])), float(score)


def run(args) -> dict:
    from benchmarks.grid import TASKS
    from benchmarks.grid.methods import SmolLM
    from peft_dect import DemonstrationConfig
    from peft_dect.dect import prompt_search

    out_path = Path(args.out)
    out = dev_study.load_result(args)
    lm = SmolLM(cache_dir=args.cache)
    demos = DemonstrationConfig(num_sets=1, per_class=1, filter=prompt_search.DEMO_FILTER)
    for key, task, k, seed in dev_study.pending_cells(args, out, TASKS):
        train, dev_split, metric = dev_study.cell_data(lm, args, task, k, seed)
        cell = {"task": task, "shots": k, "seed": seed, "dev_rows": len(dev_split)}
        for cand, d in zip(CANDIDATES, (None, demos)):
            name = f"{task}-{cand}-{k}-{seed}"
            held, dev = fit_and_score(lm, task, name, d, train, dev_split, metric)
            cell[cand] = {"heldout": held, "dev": dev}
            lm.peft_model.delete_adapter(name)
        chosen = shipped_choice(cell)
        cell["search"] = {"chosen": chosen, "dev": cell[chosen]["dev"]}
        out["cells"][key] = cell
        out["settings"] = {"data": args.data, "model": "SmolLM2-135M-Instruct", "demonstrations": str(demos)}
        out_path.write_text(json.dumps(out, indent=1))
        print(key, {c: round(100 * cell[c]["dev"], 1) for c in (*CANDIDATES, "search")}, flush=True)
    return out


def shipped_choice(cell: dict) -> str:
    """The candidate the default's rule (`peft_dect.dect.prompt_search.best`) picks from a cell's held-out scores."""
    from peft_dect import DemonstrationConfig
    from peft_dect.dect.prompt_search import DEMO_FILTER, PromptCandidate, best

    candidates = [PromptCandidate(), PromptCandidate(DemonstrationConfig(filter=DEMO_FILTER))]
    return CANDIDATES[best(candidates, [cell[c]["heldout"] for c in CANDIDATES])]


def with_ties_to(cell: dict, first: str) -> float:
    """Dev score of the search had `first` won ties of held-out score (the shipped rule: the template)."""
    other = CANDIDATES[1 - CANDIDATES.index(first)]
    return cell[first]["dev"] if cell[first]["heldout"] >= cell[other]["heldout"] else cell[other]["dev"]


def table(out: dict) -> str:
    """Per shot count: per task, the mean dev score over seeds of each candidate and of the search, in %."""
    columns = {
        "template": lambda c: c["template"]["dev"],
        "demonstrations": lambda c: c["demonstrations"]["dev"],
        "higher held-out (ties: template)": lambda c: with_ties_to(c, "template"),
        "higher held-out (ties: demonstrations)": lambda c: with_ties_to(c, "demonstrations"),
        "default (margin)": lambda c: c[shipped_choice(c)]["dev"],
    }

    def note(mine: list[dict]) -> str:
        return f"demonstrations chosen {sum(shipped_choice(c) == 'demonstrations' for c in mine)}"

    return dev_table(list(out["cells"].values()), columns, note)


def dev_table(cells: list[dict], columns: dict, note) -> str:
    """Per shot count, a markdown table: per task the mean over seeds of each column (a cell's dev score, in %),
    with `note(cells of the task)` beside its name, and the mean over tasks."""
    rows = []
    for k in sorted({c["shots"] for c in cells}, reverse=True):
        at = [c for c in cells if c["shots"] == k]
        tasks = list(dict.fromkeys(c["task"] for c in at))
        rows += [f"\n{k} shots ({len({c['seed'] for c in at})} seeds)\n", "| task | " + " | ".join(columns) + " |"]
        rows.append("|---" * (len(columns) + 1) + "|")
        means = {m: [] for m in columns}
        for t in tasks:
            mine = [c for c in at if c["task"] == t]
            per = {m: statistics.mean(100 * f(c) for c in mine) for m, f in columns.items()}
            for m, v in per.items():
                means[m].append(v)
            values = " | ".join(f"{v:.1f}" for v in per.values())
            rows.append(f"| {t} ({len(mine)}; {note(mine)}) | {values} |")
        rows.append("| mean | " + " | ".join(f"{statistics.mean(v):.1f}" for v in means.values()) + " |")
    return "\n".join(rows)


def main(argv=None) -> None:
    from benchmarks.grid import SEEDS

    parser = dev_study.parser(__doc__, "prompt_search_dev.json")
    parser.add_argument("--shots", nargs="+", type=int, default=[16, 4])
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS[:3]))
    dev_study.run_or_table(parser.parse_args(argv), run, table)


if __name__ == "__main__":
    main()
