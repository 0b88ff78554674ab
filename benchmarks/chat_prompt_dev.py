"""The chat-template prompt candidates on dev data, beside the plain ones of `benchmarks.prompt_search_dev`.

    nice -n 5 env OMP_NUM_THREADS=2 python -m benchmarks.chat_prompt_dev --data ../shared/data/fewshot

SmolLM2-135M-Instruct is an instruct model: its tokenizer has a chat template. For each cell of
`benchmarks/results/prompt_search_dev.json` (task, shots, seed: the same training split, fitted alone, scored on the
seed's whole 16-shot dev file, never a test set) this fits the two chat candidates, the prompt wrapped in the chat
template (`DecTConfig(chat_template=True)`) without and with one demonstration set, each with `budget=1`, and
compares the choices auto mode would make between 2 candidates (the default budget: template, demonstrations), 3
(+ the chat template) and 4 (+ the chat template with demonstrations) by `peft_dect.dect.prompt_search.best`.
Results go to `benchmarks/results/chat_prompt_dev.json` (resumable).
"""

from __future__ import annotations

import json
from pathlib import Path

from . import dev_study
from .prompt_search_dev import dev_table, fit_and_score


PLAIN = ("template", "demonstrations")
CHAT = ("chat", "chat_demonstrations")


def run(args) -> dict:
    from benchmarks.grid.methods import SmolLM
    from peft_dect import DemonstrationConfig
    from peft_dect.dect import prompt_search

    plain = json.loads(Path(args.plain).read_text())["cells"]
    out_path = Path(args.out)
    out = json.loads(out_path.read_text()) if out_path.exists() else {"cells": {}}
    lm = SmolLM(cache_dir=args.cache)
    demos = DemonstrationConfig(num_sets=1, per_class=1, filter=prompt_search.DEMO_FILTER)
    for key, base in plain.items():
        if key in out["cells"] or base["shots"] not in args.shots or (args.tasks and base["task"] not in args.tasks):
            continue
        task, k, seed = base["task"], base["shots"], base["seed"]
        train, dev_split, metric = dev_study.cell_data(lm, args, task, k, seed)
        cell = {c: base[c] for c in ("task", "shots", "seed", "dev_rows", *PLAIN)}
        for cand, d in zip(CHAT, (None, demos)):
            name = f"{task}-{cand}-{k}-{seed}"
            held, dev = fit_and_score(lm, task, name, d, train, dev_split, metric, chat=True)
            cell[cand] = {"heldout": held, "dev": dev}
            lm.peft_model.delete_adapter(name)
        out["cells"][key] = cell
        out["settings"] = {"data": args.data, "model": "SmolLM2-135M-Instruct", "demonstrations": str(demos)}
        out_path.write_text(json.dumps(out, indent=1))
        print(key, {c: round(100 * cell[c]["dev"], 1) for c in (*PLAIN, *CHAT)}, flush=True)
    return out


def choice(cell: dict, names: tuple[str, ...]) -> str:
    """The candidate `peft_dect.dect.prompt_search.best` picks among `names` (in auto mode's order)."""
    from peft_dect import DemonstrationConfig
    from peft_dect.dect.prompt_search import DEMO_FILTER, PromptCandidate, best

    demos = DemonstrationConfig(filter=DEMO_FILTER)
    known = {
        "template": PromptCandidate(),
        "demonstrations": PromptCandidate(demos),
        "chat": PromptCandidate(chat=True),
        "chat_demonstrations": PromptCandidate(demos, chat=True),
    }
    return names[best([known[n] for n in names], [cell[n]["heldout"] for n in names])]


def table(out: dict) -> str:
    """Per shot count: per task, the mean dev score over seeds of each candidate and of each budget's choice, in %."""
    columns = {name: (lambda c, n=name: c[n]["dev"]) for name in (*PLAIN, *CHAT)}
    for budget, names in ((2, PLAIN), (3, (*PLAIN, "chat")), (4, (*PLAIN, *CHAT))):
        columns[f"budget {budget}"] = lambda c, names=names: c[choice(c, names)]["dev"]

    def note(mine: list[dict]) -> str:
        return f"chat chosen at budget 4: {sum(choice(c, (*PLAIN, *CHAT)).startswith('chat') for c in mine)}"

    return dev_table(list(out["cells"].values()), columns, note)


def main(argv=None) -> None:
    parser = dev_study.parser(__doc__, "chat_prompt_dev.json")
    parser.add_argument("--shots", nargs="+", type=int, default=[16, 4])
    parser.add_argument(
        "--plain", default=str(dev_study.RESULTS / "prompt_search_dev.json"), help="the plain candidates' cells"
    )
    dev_study.run_or_table(parser.parse_args(argv), run, table)


if __name__ == "__main__":
    main()
