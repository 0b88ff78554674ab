"""The data of one grid cell: k-shot train/dev sampled from the 16-shot files, and a capped, seeded test sample.

Lower shot counts are drawn per class from the seed's 16-shot training file (and dev file) with a generator seeded by
the split seed, nested: the 1-shot examples are among the 4-shot ones, which are among the 16. The test set is the
task's test file, capped to a fixed seeded sample shared by every seed and method (so its features are extracted
once). A task without a test file (SNLI here) is scored on the dev splits of the other four seeds, minus any example
of this seed's train or dev split; records say which.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import SEEDS


TEST_SAMPLE_SEED = 0
FULL_SHOTS = 16


@dataclass
class CellData:
    """Train, dev and test data of one (task, shots, seed), with what was sampled, for the record."""

    task: str
    shots: int
    seed: int
    train: Any  # datasets.Dataset with text_a, text_b, label
    dev: Any
    test: Any
    classes: list[str]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def pair(self) -> bool:
        return any(self.train["text_b"])


def expected_layout(data_dir: Path, task: str, ext: str = "<ext>") -> str:
    return (
        f"{data_dir}/{task}/16-<seed>/train.{ext} and dev.{ext} for seeds {', '.join(map(str, SEEDS))}, "
        f"and the test file {data_dir}/{task}/test.{ext} (LM-BFF's k-shot layout)"
    )


def check_task_folder(data_dir: str | Path, task: str, seeds) -> None:
    """A clear error naming the expected layout when a task's data is missing."""
    from peft_dect.tasks import get_task

    spec = get_task(task)
    data_dir = Path(data_dir)
    missing = [s for s in seeds if not (data_dir / spec.name / f"{FULL_SHOTS}-{s}").is_dir()]
    if not (data_dir / spec.name).is_dir() or missing:
        what = f"{data_dir / spec.name}" if not (data_dir / spec.name).is_dir() else f"seeds {missing}"
        layout = expected_layout(data_dir, spec.name, spec.ext)
        raise FileNotFoundError(
            f"No data for task {spec.name} ({what} missing). Expected {layout}. Point --data at the folder holding "
            "the task folders."
        )


def per_class_subsample(labels: list[int], k: int, seed: int) -> list[int]:
    """Indices of k examples per class (all of a class if it has fewer), seeded and nested in k; in file order."""
    if k < 1:
        raise ValueError(f"shots must be >= 1, got {k}.")
    rng = random.Random(seed)
    chosen: list[int] = []
    for c in sorted(set(labels)):
        idx = [i for i, y in enumerate(labels) if y == c]
        rng.shuffle(idx)
        chosen.extend(idx[:k])
    return sorted(chosen)


def capped_sample(n: int, cap: int | None, seed: int = TEST_SAMPLE_SEED) -> list[int]:
    """All indices when n <= cap, else a fixed seeded sample of `cap` indices, in file order."""
    if cap is None or n <= cap:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), cap))


def _pairs(ds) -> set[tuple[str, str]]:
    return set(zip(ds["text_a"], ds["text_b"]))


def dev_pool(task: str, data_dir: Path, seed: int, own) -> Any:
    """For a task without a test file: the other seeds' dev splits, without duplicates or this seed's examples."""
    import datasets

    from peft_dect.tasks import load_task

    exclude = _pairs(own["train"]) | _pairs(own["validation"])
    parts = [load_task(task, data_dir, k=FULL_SHOTS, seed=s)["validation"] for s in SEEDS if s != seed]
    pool = datasets.concatenate_datasets(parts)
    keep, seen = [], set()
    for i, key in enumerate(zip(pool["text_a"], pool["text_b"])):
        if key not in exclude and key not in seen:
            seen.add(key)
            keep.append(i)
    return pool.select(keep)


def load_cell(task: str, data_dir: str | Path, shots: int, seed: int, test_cap: int | None) -> CellData:
    """The train/dev/test data of one cell (see the module docstring for how it is sampled)."""
    from peft_dect.tasks import get_task, load_task

    spec = get_task(task)
    data_dir = Path(data_dir)
    check_task_folder(data_dir, spec.name, [seed])
    full = load_task(spec.name, data_dir, k=FULL_SHOTS, seed=seed)
    info: dict[str, Any] = {"shots_sampled_from": f"{FULL_SHOTS}-shot files, per class, seed {seed}"}
    if shots < FULL_SHOTS:
        train = full["train"].select(per_class_subsample(full["train"]["label"], shots, seed))
        dev = full["validation"].select(per_class_subsample(full["validation"]["label"], shots, seed))
    else:
        train, dev = full["train"], full["validation"]
    if "test" in full:
        test = full["test"]
        info["test_source"] = f"{spec.name}/test.{spec.ext}"
    else:
        test = dev_pool(spec.name, data_dir, seed, full)
        others = [s for s in SEEDS if s != seed]
        info["test_source"] = (
            f"no test file: the dev splits of seeds {others}, minus duplicates and this seed's train/dev examples"
        )
    info["test_total"] = len(test)
    index = capped_sample(len(test), test_cap)
    test = test.select(index)
    info.update(test_size=len(test), test_cap=test_cap, test_sample_seed=TEST_SAMPLE_SEED)
    return CellData(spec.name, shots, seed, train, dev, test, spec.classes, info)
