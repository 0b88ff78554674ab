"""Command line of the benchmark grid: `python -m benchmarks.grid [--report]` (see the package docstring)."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path

from . import SEEDS, SHOTS, TASKS


HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent / "results"
METHODS = (
    "zero_shot",
    "calibrated_zero_shot",
    "icl",
    "dect",
    "dect_prompts",
    "linear_probe",
    "setfit",
    "setfit_i20",
    "prompt_tuning",
    "lmbff_ft",
    "prompt_tuning_e8",
    "lmbff_ft_s96",
)


def method_factories(args) -> dict:
    """Name -> factory of every method; the LM methods share one SmolLM2 and one feature cache."""
    from .methods import LM_METHODS, SmolLM

    shared: dict = {}

    def lm():
        if "lm" not in shared:
            shared["lm"] = SmolLM(args.cache, batch_size=args.batch_size, timing_seeds=tuple(args.timing_seeds))
        return shared["lm"]

    factories = {name: (lambda cls=cls: cls(lm())) for name, cls in LM_METHODS.items()}
    factories["icl"] = lambda: LM_METHODS["icl"](lm(), test_cap=args.icl_test_cap or None)

    def setfit(num_iterations):
        from .setfit_method import SetFit

        return SetFit(num_iterations=num_iterations)

    factories["setfit"] = lambda: setfit(2)
    factories["setfit_i20"] = lambda: setfit(20)  # setfit's documented default budget

    def trained(name):
        from .trained_methods import TRAINED_METHODS

        return TRAINED_METHODS[name](test_cap=args.trained_test_cap or None)

    factories["prompt_tuning"] = lambda: trained("prompt_tuning")
    for name in ("lmbff_ft", "prompt_tuning_e8", "lmbff_ft_s96"):
        factories[name] = lambda name=name: trained(name)
    return factories


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.grid", description=__doc__)
    parser.add_argument("--data", default="../shared/data/fewshot", help="LM-BFF k-shot data folder")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--shots", nargs="+", type=int, default=list(SHOTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--test-cap", type=int, default=200, help="cap test sets to a fixed seeded sample (0: none)")
    parser.add_argument(
        "--icl-test-cap", type=int, default=40, help="in-context learning scores this many of the capped test rows"
    )
    parser.add_argument(
        "--trained-test-cap",
        type=int,
        default=40,
        help="prompt tuning and LM-BFF fine-tuning score this many of the capped test rows",
    )
    parser.add_argument("--out", default=str(RESULTS / "grid"), help="folder of the per-cell JSON records")
    parser.add_argument("--cache", default=str(HERE.parent / ".cache"), help="shared SmolLM2 feature cache folder")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--timing-seeds", nargs="*", type=int, default=[13], help="seeds whose cells time training from a cold cache"
    )
    parser.add_argument("--report", action="store_true", help="write the markdown table and plots from the records")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    if args.report:
        from .report import write_report

        print(write_report(Path(args.out), RESULTS))
        return 0
    from .runner import grid_cells, run_grid

    cells = grid_cells(args.tasks, args.methods, args.shots, args.seeds)
    try:
        counts = run_grid(
            cells,
            method_factories(args),
            args.data,
            args.out,
            test_cap=args.test_cap or None,
            show_progress=not args.quiet,
        )
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{len(cells)} cells: {counts['done']} run, {counts['read_back']} read back, {counts['failed']} failed")
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
