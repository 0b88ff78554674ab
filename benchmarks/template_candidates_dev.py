"""Template candidates on dev data: the task's template against two more, chosen by held-out score or ensembled.

    nice -n 5 env OMP_NUM_THREADS=2 python -m benchmarks.template_candidates_dev --data ../shared/data/fewshot

What a user who gives `DecTConfig(templates=[...])` gets, measured on the grid's 8 tasks. For each seed, the k-shot
training split is drawn as the grid draws it (`benchmarks.grid.data`); the fit sees that split alone (auto mode's
cross-validation folds) and is scored on the seed's whole 16-shot dev file, which it never sees (no test data). Each
candidate (the task's template and the two of `ALTERNATIVES`, each alone and with one demonstration set) is fitted
on its own with `budget=1` (SmolLM2, the grid's label words, the task's metric), as auto mode fits each candidate on
the same folds. The table then compares, on dev scores:

- the task's template alone (the grid's `dect`) and the default's choice between it and demonstrations
  (`dect_prompts`);
- `templates=ALTERNATIVES` with `budget=6`: `peft_dect.dect.prompt_search.best` over all six candidates in the
  plan's order (what `fit` does);
- the same without demonstrations (`budget=3`): the three templates alone;
- `templates=ALTERNATIVES, budget=12, max_passes_per_input=3`: the same choice with the two means over the three
  templates (`PromptCandidate.averaged`, early fusion below) as candidates too;
- ensembles of the three templates (3 passes per input at training and at prediction), alone and each with one
  demonstration set: late fusion (the mean of the candidates' probabilities) and early fusion, the library's
  `DecTConfig(templates_averaged=True)` (one decoder on each input's features averaged over the templates, as
  `Backbone.extract` averages demonstration sets; from the candidates' cached features, no model pass of its own).

The alternatives were written for this study before it ran (no search on dev data): one plain rewording and one
"field: value" prompt per task. Results go to `benchmarks/results/template_candidates_dev.json` (resumable).
"""

from __future__ import annotations

import json
from pathlib import Path

from . import dev_study


SENTIMENT = ("{text_a} It was {mask}.", "Review: {text_a}\nSentiment: {mask}")
ALTERNATIVES = {
    "SST-2": SENTIMENT,
    "sst-5": SENTIMENT,
    "cr": SENTIMENT,
    "mpqa": ("{text_a} It was {mask}.", "Phrase: {text_a}\nSentiment: {mask}"),
    "RTE": (
        '{text_a}\nQuestion: does this imply that "{text_b}"? Yes or no?\nAnswer:{mask}',
        "Premise: {text_a}\nHypothesis: {text_b}\nDoes the premise entail the hypothesis? Yes or no?\nAnswer:{mask}",
    ),
    "MRPC": (
        "{text_a}\n{text_b}\nQuestion: do these two sentences say the same thing? Yes or no?\nAnswer:{mask}",
        "Sentence 1: {text_a}\nSentence 2: {text_b}\nAre the two sentences paraphrases? Yes or no?\nAnswer:{mask}",
    ),
    "QNLI": (
        '{text_b}\nQuestion: does this sentence answer "{text_a}"? Yes or no?\nAnswer:{mask}',
        "Question: {text_a}\nSentence: {text_b}\nDoes the sentence answer the question? Yes or no?\nAnswer:{mask}",
    ),
    "SNLI": (
        '{text_a}\nQuestion: is it true that "{text_b}"? Yes, no, or maybe?\nAnswer:{mask}',
        "Premise: {text_a}\nHypothesis: {text_b}\nDoes the premise entail the hypothesis? Yes, no, or maybe?\n"
        "Answer:{mask}",
    ),
}
TEMPLATES = ("task", "alt1", "alt2")
PROMPTS = ("template", "demonstrations")


def fit_and_score(lm, task: str, name: str, template: str, demos, train, dev, metric, cfg=None) -> dict:
    """Held-out score, dev score and dev probabilities of one candidate (`template`, or `cfg` as given) fitted on
    `train` alone."""
    import torch

    from peft_dect.tasks import main_metric, task_metric

    peft_model = lm.peft_model
    cfg = cfg if cfg is not None else lm.config(task)
    cfg.template, cfg.budget, cfg.demonstrations = template, 1, demos
    peft_model.add_adapter(name, cfg)
    peft_model.set_adapter(name)
    tuner = peft_model.base_model
    report = peft_model.fit(train, lm.tokenizer, batch_size=lm.batch_size, show_progress=False, metric=metric)
    proba = torch.softmax(tuner.predict_logits(dev).float(), -1)
    score = task_metric(task, proba.argmax(-1).tolist(), dev["label"])[main_metric(task)]
    key = report.get("selected_by", "accuracy")
    peft_model.delete_adapter(name)
    return {
        "heldout": float(report.get(f"heldout_{key}", report["heldout_accuracy"])),
        "dev": float(score),
        "proba": [[round(p, 5) for p in row] for row in proba.tolist()],
    }


def ensemble_score(lm, task: str, templates, demos, train, dev, metric) -> dict:
    """Held-out and dev score of the library's mean over `templates` (`DecTConfig(templates_averaged=True)`: one
    decoder on each input's features averaged over them; early fusion)."""
    cfg = lm.config(task)
    cfg.template, cfg.templates, cfg.templates_averaged = templates[0], list(templates[1:]), True
    cfg.check_templates()
    scores = fit_and_score(lm, task, f"{task}-mean", templates[0], demos, train, dev, metric, cfg=cfg)
    return {k: scores[k] for k in ("heldout", "dev")}


def run(args) -> dict:
    from benchmarks.grid import TASKS
    from benchmarks.grid.methods import SmolLM
    from peft_dect import DemonstrationConfig
    from peft_dect.dect import prompt_search
    from peft_dect.tasks import get_task

    out_path = Path(args.out)
    out = dev_study.load_result(args)
    lm = SmolLM(cache_dir=args.cache)
    demos = DemonstrationConfig(num_sets=1, per_class=1, filter=prompt_search.DEMO_FILTER)
    for key, task, k, seed in dev_study.pending_cells(args, out, TASKS):
        train, dev, metric = dev_study.cell_data(lm, args, task, k, seed)
        templates = (get_task(task).causal_template, *ALTERNATIVES[task])
        cell = {"task": task, "shots": k, "seed": seed, "dev_label": list(dev["label"])}
        for t_name, template in zip(TEMPLATES, templates):
            for p_name, d in zip(PROMPTS, (None, demos)):
                name = f"{task}-{t_name}-{p_name}-{k}-{seed}"
                cell[f"{t_name}/{p_name}"] = fit_and_score(lm, task, name, template, d, train, dev, metric)
        for p_name, d in zip(PROMPTS, (None, demos)):
            cell[f"early/{p_name}"] = ensemble_score(lm, task, templates, d, train, dev, metric)
        out["cells"][key] = cell
        out["settings"] = {"data": args.data, "model": "SmolLM2-135M-Instruct", "alternatives": ALTERNATIVES}
        out_path.write_text(json.dumps(out))
        print(key, {c: round(100 * v["dev"], 1) for c, v in cell.items() if isinstance(v, dict)}, flush=True)
    return out


def candidates_in_plan_order(names: list[str]):
    """The `PromptCandidate`s of `names` (e.g. "alt1/demonstrations"), in the order `prompt_search.plan` tries
    them: each template's plain prompt, then its demonstrations."""
    from peft_dect import DemonstrationConfig
    from peft_dect.dect.prompt_search import DEMO_FILTER, PromptCandidate

    out = []
    for n in names:
        t_name, p_name = n.split("/")
        demos = DemonstrationConfig(filter=DEMO_FILTER) if p_name == "demonstrations" else None
        if t_name == "early":
            out.append(PromptCandidate(demos, averaged=len(TEMPLATES)))
        else:
            out.append(PromptCandidate(demos, template=None if t_name == "task" else t_name))
    return out


def rule(cell: dict, names: list[str]) -> float:
    """Dev score of the candidate `prompt_search.best` picks among `names` by their held-out scores."""
    from peft_dect.dect.prompt_search import best

    chosen = best(candidates_in_plan_order(names), [cell[n]["heldout"] for n in names])
    return cell[names[chosen]]["dev"]


def ensemble(cell: dict, names: list[str]) -> float:
    """Dev score of the mean of the candidates' probabilities."""
    from peft_dect.tasks import main_metric, task_metric

    rows = zip(*(cell[n]["proba"] for n in names))
    pred = [max(range(len(ps[0])), key=lambda j: sum(p[j] for p in ps)) for ps in rows]
    return task_metric(cell["task"], pred, cell["dev_label"])[main_metric(cell["task"])]


ALL = [f"{t}/{p}" for t in TEMPLATES for p in PROMPTS]
PLAIN = [f"{t}/template" for t in TEMPLATES]
DEMOS = [f"{t}/demonstrations" for t in TEMPLATES]
EARLY = [f"early/{p}" for p in PROMPTS]  # what fit tries after the single templates: the means over all three


def table(out: dict) -> str:
    """Per shot count: per task, the mean dev score over seeds of each candidate, choice rule and ensemble, in %."""
    from .prompt_search_dev import dev_table

    columns = {
        "task's template": lambda c: c["task/template"]["dev"],
        "alt 1": lambda c: c["alt1/template"]["dev"],
        "alt 2": lambda c: c["alt2/template"]["dev"],
        "default (task's template or demos)": lambda c: rule(c, ALL[:2]),
        "templates alone, chosen (budget 3)": lambda c: rule(c, PLAIN),
        "templates x demos, chosen (budget 6)": lambda c: rule(c, ALL),
        "late fusion of templates": lambda c: ensemble(c, PLAIN),
        "late fusion, with demos": lambda c: ensemble(c, DEMOS),
        "early fusion of templates": lambda c: c["early/template"]["dev"],
        "early fusion, with demos": lambda c: c["early/demonstrations"]["dev"],
        "all 8, chosen (budget 12, 3 passes at prediction)": lambda c: rule(c, ALL + EARLY),
    }
    return dev_table(list(out["cells"].values()), columns, lambda mine: f"{len(mine)} seeds")


def main(argv=None) -> None:
    from benchmarks.grid import SEEDS

    parser = dev_study.parser(__doc__, "template_candidates_dev.json")
    parser.add_argument("--shots", nargs="+", type=int, default=[16])
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS[:3]))
    dev_study.run_or_table(parser.parse_args(argv), run, table)


if __name__ == "__main__":
    main()
