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
