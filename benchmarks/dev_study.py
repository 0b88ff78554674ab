"""The command line the dev studies share: data and cache folders, a resumable JSON result, `--table` to reprint."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path


RESULTS = Path(__file__).parent / "results"


def parser(doc: str, result_name: str, *, tasks: bool = True) -> argparse.ArgumentParser:
    """--data, --cache (the grid's feature cache), --out (`benchmarks/results/<result_name>`), --table and, with
    `tasks`, --tasks; a study adds its own options."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/fewshot")
    p.add_argument("--cache", default=str(Path(__file__).parent / ".cache"), help="the grid's feature cache")
    if tasks:
        p.add_argument("--tasks", nargs="+", default=None)
    p.add_argument("--out", default=str(RESULTS / result_name))
    p.add_argument("--table", action="store_true", help="print the table of an existing result file")
    return p


def run_or_table(args, run: Callable[[argparse.Namespace], dict], table: Callable[[dict], str]) -> None:
    """Run the study (or, with --table, read its result file) and print its table."""
    out = json.loads(Path(args.out).read_text()) if args.table else run(args)
    print(table(out))


def cell_data(lm, args, task: str, k: int, seed: int):
    """(train, dev, metric) of one cell: the k-shot training split drawn from the seed's 16-shot training file as the
    grid draws it, the seed's whole 16-shot dev file, and the task's metric for `fit(metric=)` (None: accuracy);
    `lm` (the grid's `SmolLM`) gets the task's adapter active on the `args.cache` feature cache."""
    from benchmarks.grid.data import FULL_SHOTS, per_class_subsample
    from peft_dect.tasks import get_task, load_task

    lm.activate(task)
    lm.peft_model.base_model.use_cache_dir(args.cache)
    full = load_task(task, args.data, k=FULL_SHOTS, seed=seed)
    train = full["train"].select(per_class_subsample(full["train"]["label"], k, seed))
    metric = get_task(task).metric
    return train, full["validation"], metric if metric in ("f1", "matthews_correlation") else None


def pending_cells(args, out: dict, tasks):
    """(key, task, k, seed) of every cell of `args.seeds` x (`args.tasks` or `tasks`) x `args.shots` that the result
    `out` does not hold yet, in that order (a study resumes where it stopped)."""
    for seed in args.seeds:
        for task in args.tasks or tasks:
            for k in args.shots:
                key = f"{task};k={k};seed={seed}"
                if key not in out["cells"]:
                    yield key, task, k, seed


def load_result(args) -> dict:
    """The study's result file so far (`args.out`), or an empty one."""
    path = Path(args.out)
    return json.loads(path.read_text()) if path.exists() else {"cells": {}}
