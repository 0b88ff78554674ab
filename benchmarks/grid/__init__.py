"""The benchmark grid: tasks x methods x shots x seeds, one resumable JSON record per cell.

    python -m benchmarks.grid --data ../shared/data/fewshot            # run (finished cells are read back)
    python -m benchmarks.grid --report                                 # markdown table and PNG plots

Records live in ``benchmarks/results/grid/<task>/<method>/<shots>-<seed>.json``.
"""

SHOTS = (16, 4, 1)  # run order: the target is at 16 shots
SEEDS = (13, 21, 42, 87, 100)
TASKS = ("SST-2", "sst-5", "cr", "mpqa", "RTE", "MRPC", "QNLI", "SNLI")
