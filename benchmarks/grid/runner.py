"""Run the grid cell by cell: skip finished cells, run the rest, score and write one record per cell."""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .data import CellData, check_task_folder, load_cell
from .records import Cell, PeakMemory, read_record, write_record


logger = logging.getLogger(__name__)


def grid_cells(tasks: Iterable[str], methods: Iterable[str], shots: Iterable[int], seeds: Iterable[int]) -> list[Cell]:
    """Cells in run order: all of the first shot count, then the next; within one, seed by seed over every task and
    method, so that a run cut short has every task for its first seeds (the mean over tasks is what users compare)."""
    tasks, methods, seeds = list(tasks), list(methods), list(seeds)
    return [Cell(t, m, k, s) for k in shots for s in seeds for t in tasks for m in methods]


def score(metric: str, labels: list[int], predictions: list[int]) -> dict[str, float]:
    """Accuracy and the task's metric (accuracy, F1 of the positive class, or Matthews correlation)."""
    from sklearn.metrics import f1_score, matthews_corrcoef

    if len(labels) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} test examples.")
    out = {"accuracy": sum(int(a == b) for a, b in zip(labels, predictions)) / len(labels)}
    if metric == "f1":
        out["f1"] = float(f1_score(labels, predictions))
    elif metric == "matthews_correlation":
        out["matthews_correlation"] = float(matthews_corrcoef(labels, predictions))
    return out


def versions(extra: Iterable[str] = ()) -> dict[str, str]:
    """Versions of Python and the packages a record depends on."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("peft-dect", "torch", "transformers", "peft", "scikit-learn", *extra):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return out


def run_grid(
    cells: list[Cell],
    methods: dict[str, Callable[[], Any]],
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    test_cap: int | None,
    show_progress: bool = True,
    loader: Callable[..., CellData] = load_cell,
) -> dict[str, int]:
    """Run every unfinished cell. `methods` maps a name to a factory of an object with `run(CellData)`, built on first
    use (so a finished grid never loads a model). Returns counts of cells done, read back and failed."""
    from peft_dect.tasks import get_task

    out_dir = Path(out_dir)
    for task in dict.fromkeys(c.task for c in cells):  # fail early on a missing data folder
        check_task_folder(data_dir, task, sorted({c.seed for c in cells if c.task == task}))
    unknown = {c.method for c in cells} - set(methods)
    if unknown:
        raise ValueError(f"Unknown method(s) {sorted(unknown)}; known: {sorted(methods)}.")
    built: dict[str, Any] = {}
    data_cache: dict[tuple[str, int, int], CellData] = {}
    counts = {"done": 0, "read_back": 0, "failed": 0}
    bar = tqdm(cells, desc="grid", unit="cell", disable=not show_progress)
    for cell in bar:
        path = cell.path(out_dir)
        if path.exists() and read_record(path, cell) is not None:
            counts["read_back"] += 1
            continue
        bar.set_postfix_str(f"{cell.task} {cell.method} {cell.shots}-shot seed {cell.seed}")
        key = (cell.task, cell.shots, cell.seed)
        if key not in data_cache:
            data_cache.clear()
            data_cache[key] = loader(cell.task, data_dir, cell.shots, cell.seed, test_cap)
        data = data_cache[key]
        if cell.method not in built:
            built[cell.method] = methods[cell.method]()
        method = built[cell.method]
        spec = get_task(cell.task)
        started = time.time()
        try:
            with PeakMemory() as mem:
                result = method.run(data)
        except Exception:
            logger.exception("Cell %s failed; it is left unfinished and will be retried on the next run.", cell)
            counts["failed"] += 1
            continue
        labels = list(data.test["label"])
        if result.test_index is not None:
            labels = [labels[i] for i in result.test_index]
        scores = score(spec.metric, labels, result.predictions)
        record = {
            "task": cell.task,
            "method": cell.method,
            "shots": cell.shots,
            "seed": cell.seed,
            "metric": spec.metric,
            "score": scores[spec.metric],
            **scores,
            "train_seconds": result.train_seconds,
            "model_passes": result.train_passes + result.predict_passes,
            "train_passes": result.train_passes,
            "predict_passes": result.predict_passes,
            "peak_memory_mb": round(mem.mb, 1),
            "peak_memory_source": mem.source,
            "cell_seconds": time.time() - started,
            "train_size": len(data.train),
            "dev_size": len(data.dev),
            **data.info,
            **({"test_size": len(labels)} if result.test_index is not None else {}),
            "details": result.extra,
            "versions": versions(getattr(method, "packages", ())),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        write_record(path, record)
        counts["done"] += 1
        logger.info("%s: %s = %.3f", cell, spec.metric, record["score"])
    return counts
