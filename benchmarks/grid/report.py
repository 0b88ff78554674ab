"""The grid's report from its JSON records: markdown tables (mean ± std over seeds) and matplotlib PNG plots.

Bad or foreign JSON files in the results folder are skipped with a warning. Training time in the plots and the cost
table comes from the cells timed from a cold cache (see `benchmarks.grid.methods`).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from . import SHOTS, TASKS
from .records import read_all


METHOD_ORDER = (
    "zero_shot",
    "calibrated_zero_shot",
    "icl",
    "linear_probe",
    "setfit",
    "setfit_i20",
    "prompt_tuning",
    "lmbff_ft",
    "prompt_tuning_e8",
    "lmbff_ft_s96",
    "dect",
    "dect_prompts",
)
LABELS = {
    "zero_shot": "zero-shot",
    "calibrated_zero_shot": "calibrated zero-shot",
    "icl": "in-context learning",
    "linear_probe": "linear probe",
    "setfit": "SetFit (num_iterations=2)",
    "setfit_i20": "SetFit (num_iterations=20, its default)",
    "prompt_tuning": "prompt tuning",
    "lmbff_ft": "LM-BFF fine-tuning (LoRA)",
    "prompt_tuning_e8": "prompt tuning (8 epochs)",
    "lmbff_ft_s96": "LM-BFF fine-tuning (LoRA, 96 steps)",
    "dect": "DecT",
    "dect_prompts": "DecT, prompt chosen (default)",
}
PEERS = tuple(m for m in METHOD_ORDER if m not in ("zero_shot", "dect", "dect_prompts"))
WHY_SUBSAMPLED = {
    "icl": "its prompts carry demonstrations and are several times longer",
    **dict.fromkeys(
        ("prompt_tuning", "lmbff_ft", "prompt_tuning_e8", "lmbff_ft_s96"),
        "it trains and runs the whole model, with no feature cache to share",
    ),
}
TIME_FLOOR = 1e-2  # seconds: where methods without training sit on the log axis


def _ordered(values, order) -> list:
    known = [v for v in order if v in values]
    return known + sorted(v for v in values if v not in order)


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def _cold(record: dict[str, Any]) -> bool:
    return (record.get("details") or {}).get("timing", "cold") == "cold"


class Grid:
    """Records indexed by (task, method, shots)."""

    def __init__(self, records: list[dict[str, Any]]) -> None:
        self.records = records
        self.cells: dict[tuple[str, str, int], list[dict]] = defaultdict(list)
        for r in records:
            self.cells[(r["task"], r["method"], int(r["shots"]))].append(r)
        self.tasks = _ordered({r["task"] for r in records}, TASKS)
        self.methods = _ordered({r["method"] for r in records}, METHOD_ORDER)
        self.shots = _ordered({int(r["shots"]) for r in records}, SHOTS)

    def scores(self, task: str, method: str, shots: int, seeds: set | None = None) -> list[float]:
        rs = self.cells.get((task, method, shots), [])
        return [100 * r["score"] for r in rs if seeds is None or r["seed"] in seeds]

    def seeds(self, task: str, method: str, shots: int) -> set:
        return {r["seed"] for r in self.cells.get((task, method, shots), [])}

    def task_means(self, method: str, shots: int, like: str | None = None) -> dict[str, float]:
        """Mean over seeds per task, for the tasks this method has records of (only the seeds that method `like`
        has records of, when given: a paired comparison with a method run on fewer seeds)."""
        out = {}
        for task in self.tasks:
            seeds = None if like is None else self.seeds(task, like, shots)
            xs = self.scores(task, method, shots, seeds)
            if xs:
                out[task] = statistics.mean(xs)
        return out

    def mean_over_tasks(self, method: str, shots: int) -> tuple[float, int] | None:
        means = self.task_means(method, shots)
        return (statistics.mean(means.values()), len(means)) if means else None

    def train_seconds(self, method: str, shots: int, task: str | None = None) -> float | None:
        """Median cold-cache training seconds over the (task's) timed cells."""
        xs = [
            r["train_seconds"]
            for (t, m, k), rs in self.cells.items()
            if m == method and k == shots and (task is None or t == task)
            for r in rs
            if _cold(r)
        ]
        return statistics.median(xs) if xs else None


def score_table(grid: Grid, shots: int) -> str:
    head = "| task | " + " | ".join(LABELS.get(m, m) for m in grid.methods) + " |"
    rows = [head, "|---" * (len(grid.methods) + 1) + "|"]
    for task in grid.tasks:
        cells = []
        for m in grid.methods:
            xs = grid.scores(task, m, shots)
            if not xs:
                cells.append("–")
                continue
            mean, std = _mean_std(xs)
            n = f" ({len(xs)} seed{'s' if len(xs) > 1 else ''})" if len(xs) < 5 else ""
            cells.append(f"{mean:.1f} ± {std:.1f}{n}")
        metric = grid.cells.get((task, grid.methods[0], shots), [{}])
        name = task + (" (F1)" if any(r.get("metric") == "f1" for r in metric) else "")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    means = []
    for m in grid.methods:
        got = grid.mean_over_tasks(m, shots)
        if got is None:
            means.append("–")
        else:
            mean, n = got
            means.append(f"**{mean:.1f}**" + ("" if n == len(grid.tasks) else f" ({n} tasks)"))
    rows.append("| mean over tasks | " + " | ".join(means) + " |")
    return "\n".join(rows)


def cost_table(grid: Grid, shots: int) -> str:
    rows = [
        "| method | train seconds (median, cold) | model passes per cell (median) | peak memory MB (median) |",
        "|---|---|---|---|",
    ]
    for m in grid.methods:
        rs = [r for (t, mm, k), v in grid.cells.items() if mm == m and k == shots for r in v]
        if not rs:
            continue
        secs = grid.train_seconds(m, shots)
        passes = statistics.median(r["model_passes"] for r in rs)
        mem = statistics.median(r["peak_memory_mb"] for r in rs if r.get("peak_memory_mb") is not None)
        rows.append(f"| {LABELS.get(m, m)} | {'–' if secs is None else f'{secs:.2f}'} | {passes:.0f} | {mem:.0f} |")
    return "\n".join(rows)


def dect_ratios(grid: Grid, shots: int) -> dict[str, float]:
    """Median fit / plain-inference ratio of the timed DecT cells, per task."""
    out = {}
    for task in grid.tasks:
        xs = [
            r["details"]["fit_over_inference"]
            for r in grid.cells.get((task, "dect", shots), [])
            if "fit_over_inference" in (r.get("details") or {})
        ]
        if xs:
            out[task] = statistics.median(xs)
    return out


def verdict(grid: Grid, shots: int = 16, method: str = "dect") -> str:
    """Plain statements: is DecT (`method`) ahead of each peer (mean over tasks), and by how much; for "dect",
    is its training cost within 1.1x?"""
    lines = []
    dect = grid.task_means(method, shots)
    name = LABELS.get(method, method)
    if not dect:
        return f"No {name} records at this shot count yet."
    paired = method != "dect"  # a newer method may have fewer seeds: its peers are averaged over the same ones
    for peer in ("dect", *PEERS) if paired else PEERS:
        other = grid.task_means(peer, shots, like=method if paired else None)
        mine, note = dect, ""
        fewer = sorted({s for t in other for s in grid.seeds(t, peer, shots)})
        if any(grid.seeds(t, peer, shots) < grid.seeds(t, method, shots) for t in other):
            # a peer run on fewer seeds (a larger budget): this method averaged over the same seeds
            mine = grid.task_means(method, shots, like=peer)
            note = f", paired on seed{'s' if len(fewer) > 1 else ''} {', '.join(map(str, fewer))}"
        common = [t for t in mine if t in other]
        if not common:
            lines.append(f"- {LABELS[peer]}: no records, no comparison.")
            continue
        d = statistics.mean(mine[t] for t in common)
        o = statistics.mean(other[t] for t in common)
        behind = [f"{t} ({mine[t]:.1f} vs {other[t]:.1f})" for t in common if mine[t] < other[t]]
        word = "ahead of" if d > o else "NOT ahead of"
        line = f"- {name} is {word} {LABELS[peer]}: {d:.1f} vs {o:.1f} (mean over {len(common)} tasks{note})"
        line += f"; behind on {', '.join(behind)}." if behind else "; ahead or equal on every task."
        lines.append(line)
    if paired:
        seeds = sorted({seed for task in dect for seed in grid.seeds(task, method, shots)})
        lines.insert(0, f"Paired on the seeds {name} has records of ({', '.join(map(str, seeds))}).")
        return "\n".join(lines)
    ratios = dect_ratios(grid, shots)
    if ratios:
        median = statistics.median(ratios.values())
        within = "within" if median <= 1.1 else "NOT within"
        per_task = ", ".join(f"{t} {v:.2f}" for t, v in ratios.items())
        lines.append(
            f"- DecT's training cost is {within} 1.1x of one inference pass over its training inputs: median "
            f"fit / plain-inference ratio {median:.2f} over {len(ratios)} tasks ({per_task})."
        )
    return "\n".join(lines)


def dect_diagnostics(grid: Grid, shots: int) -> str:
    """Per task: DecT against the prior it fuses (calibrated zero-shot) and the linear probe on the same features,
    with what auto mode chose (fusion weight lam, calibration) and the held-out accuracy it chose on."""
    rows = [
        "| task | DecT | calibrated zero-shot | linear probe | DecT held-out (CV + dev) | lam chosen per seed "
        "| calibrated |",
        "|---|---|---|---|---|---|---|",
    ]
    for task in grid.tasks:
        recs = sorted(grid.cells.get((task, "dect", shots), []), key=lambda r: r["seed"])
        if not recs:
            continue
        choices = [(r.get("details") or {}).get("choice", {}) for r in recs]

        def mean(method: str, task=task) -> str:
            xs = grid.scores(task, method, shots)
            return f"{statistics.mean(xs):.1f}" if xs else "–"

        held = [c["heldout_accuracy"] for c in choices if "heldout_accuracy" in c]
        lams = ", ".join(f"{c['lam']:g}" for c in choices if "lam" in c)
        calibrated = sum(bool(c.get("calibrate")) for c in choices)
        rows.append(
            f"| {task} | {mean('dect')} | {mean('calibrated_zero_shot')} | {mean('linear_probe')} "
            f"| {100 * statistics.mean(held):.1f} | {lams} | {calibrated}/{len(choices)} |"
            if held
            else f"| {task} | {mean('dect')} | {mean('calibrated_zero_shot')} | {mean('linear_probe')} | – | – | – |"
        )
    return "\n".join(rows)


def _plot_shots(grid: Grid, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 4
    rows = -(-len(grid.tasks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax, task in zip(axes.flat, grid.tasks):
        for m in grid.methods:
            pts = [(k, *_mean_std(grid.scores(task, m, k))) for k in sorted(grid.shots) if grid.scores(task, m, k)]
            if pts:
                ks, means, stds = zip(*pts)
                ax.errorbar(ks, means, yerr=stds, marker="o", capsize=3, label=LABELS.get(m, m))
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(grid.shots), [str(k) for k in sorted(grid.shots)])
        ax.set_title(task)
        ax.set_xlabel("shots per class")
        ax.set_ylabel("score (%)")
    for ax in list(axes.flat)[len(grid.tasks) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels))
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_time(grid: Grid, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m in grid.methods:
        pts = []
        for k in sorted(grid.shots):
            got, secs = grid.mean_over_tasks(m, k), grid.train_seconds(m, k)
            if got is not None and secs is not None:
                pts.append((max(secs, TIME_FLOOR), got[0], k))
        if not pts:
            continue
        xs, ys, ks = zip(*pts)
        ax.plot(xs, ys, marker="o", label=LABELS.get(m, m))
        for x, y, k in pts:
            ax.annotate(f"{k}", (x, y), textcoords="offset points", xytext=(4, 3), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel(f"training seconds per cell (median over tasks, cold cache; no training drawn at {TIME_FLOOR} s)")
    ax.set_ylabel("score, mean over tasks (%)")
    ax.set_title("Score vs training time (labels: shots per class)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(grid: Grid) -> str:
    """The markdown report of a set of records."""
    if not grid.records:
        return "No grid records found."
    caps = sorted({r.get("test_cap") for r in grid.records if r.get("test_cap")})
    no_test = sorted({r["task"] for r in grid.records if "no test file" in r["test_source"]})
    sources = [
        f"{t}: no test file; each seed is scored on the other seeds' dev splits, minus duplicates and its own "
        "train/dev examples"
        for t in no_test
    ]
    parts = [
        f"{len(grid.records)} cells. Score: accuracy (F1 for MRPC), % mean ± std over seeds. Test sets capped to a "
        f"fixed seeded sample of {', '.join(map(str, caps)) or 'no'} examples (shared by every seed and method)."
        + ("".join(f" {s}." for s in sources)),
    ]
    subsampled = sorted({r["method"] for r in grid.records if "test_subsample" in (r.get("details") or {})})
    for m in subsampled:
        sizes = sorted({r["test_size"] for r in grid.records if r["method"] == m})
        parts.append(
            f"{LABELS.get(m, m)} is scored on a seeded subsample of {', '.join(map(str, sizes))} of those rows "
            f"({WHY_SUBSAMPLED.get(m, 'see its records')})."
        )
    for k in grid.shots:
        parts += [f"\n### {k} shots per class\n", score_table(grid, k)]
    k = 16 if 16 in grid.shots else grid.shots[0]
    parts += [f"\n### Cost at {k} shots\n", cost_table(grid, k), f"\n### DecT at {k} shots against its peers\n"]
    parts.append(verdict(grid, k))
    for shots in grid.shots:
        if grid.task_means("dect_prompts", shots):
            parts += [f"\n### {LABELS['dect_prompts']} at {shots} shots against its peers\n"]
            parts.append(verdict(grid, shots, "dect_prompts"))
    parts += [f"\n### What DecT's auto mode chose, {k} shots\n", dect_diagnostics(grid, k)]
    return "\n".join(parts) + "\n"


def write_report(grid_dir: Path, results_dir: Path, plots: bool = True) -> str:
    """Write `grid_report.md` (and the PNG plots) to `results_dir`; return the markdown."""
    grid = Grid(read_all(grid_dir))
    text = render(grid)
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "grid_report.md").write_text(text)
    if plots and grid.records:
        _plot_shots(grid, results_dir / "grid_score_vs_shots.png")
        _plot_time(grid, results_dir / "grid_score_vs_time.png")
    return text
