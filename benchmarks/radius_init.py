"""DecT's radius initialisation on two hidden-state scales: the reference code's against the scale-invariant one.

    python -m benchmarks.radius_init --data ../shared/data/fewshot
    python -m benchmarks.radius_init --tasks QNLI --test-size 1000 --out benchmarks/results/radius_init_qnli.json
    python -m benchmarks.radius_init --tasks --banking77 ../shared/data/banking77 \
        --out benchmarks/results/radius_init_banking77.json

SmolLM2-135M-Instruct, 16 shots, SST-2, CR, sst-5 and SNLI. Features are extracted once per task (train, dev and
test inputs, cached on disk) and every variant trains on them (a decoder trains in milliseconds):

- DecT faithful (lam = 1/16, 30 epochs, calibration on) and DecT auto (4-fold cross-validation of the training set
  plus the seed's dev split), each with ``radius_init="reference"`` (radii measured before normalisation, as
  thunlp/DecT does) and ``"normalized"`` (radii measured on the normalised projections the score uses);
- each of them on SmolLM2's hidden states as they are (scale 1) and multiplied by 10, which a scale-invariant
  decoder must not notice.

Test sets are capped to one seeded sample of `--test-size` rows, the same for every seed and variant. SNLI has no
test set in the data folder: its test rows are the other seeds' train and dev rows that are not in this seed's
train or dev split (so nothing the fit reads or chooses on). Nothing is chosen on test data. Results go to
`benchmarks/results/radius_init.json`; `--table` prints the README table from that file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import warnings
from pathlib import Path
from types import SimpleNamespace

import torch


RESULTS = Path(__file__).parent / "results"
TASKS = ("SST-2", "cr", "sst-5", "SNLI")
SEEDS = (13, 21, 42, 87, 100)
SCALES = (1.0, 10.0)
INITS = ("reference", "normalized")
MODES = ("faithful", "auto")


def prompt_of(spec) -> tuple[str, dict]:
    """The task's causal template and label words; SST-2 and CR use the DecT benchmark's prompt."""
    if spec.name in ("SST-2", "cr"):
        return "{text_a} In summary, it was {mask}", {"negative": ["bad"], "positive": ["great"]}
    return spec.causal_template, spec.label_words


def rows_of(ds, pair: bool) -> list[tuple]:
    return [
        (a, b if pair else None, y)
        for a, b, y in zip(ds["text_a"], ds["text_b"] if pair else ds["text_a"], ds["label"])
    ]


def test_rows(splits: dict, seed: int, pair: bool, size: int, sample_seed: int = 0) -> list[tuple]:
    """A seeded sample of `size` test rows; without a test split, the other seeds' rows this seed does not read."""
    if "test" in splits[seed]:
        rows = rows_of(splits[seed]["test"], pair)
    else:
        own = {r[:2] for split in ("train", "validation") for r in rows_of(splits[seed][split], pair)}
        pooled = {}
        for s in sorted(splits):
            for split in ("train", "validation"):
                for r in rows_of(splits[s][split], pair):
                    if r[:2] not in own:
                        pooled.setdefault(r[:2], r)
        rows = list(pooled.values())
    if len(rows) > size:
        keep = torch.randperm(len(rows), generator=torch.Generator().manual_seed(sample_seed))[:size]
        rows = [rows[i] for i in sorted(keep.tolist())]
    return rows


def extract(bb, rows: list[tuple], pair: bool):
    feats = bb.extract([r[0] for r in rows], [r[1] for r in rows] if pair else None)
    return feats, torch.tensor([r[2] for r in rows])


def accuracy(result, feats, labels, content_free) -> float:
    from peft_dect.dect import decoder
    from peft_dect.dect.fit import probs

    q = probs(feats.label_logits, content_free, result.calibrate)
    scores = decoder.scores(result.weights, feats.hidden, q, result.lam)[0]
    return float((scores.argmax(-1) == labels).float().mean())


def evaluate_seed(train, dev, test, content_free, num_classes: int) -> dict:
    """Test accuracy of every (mode, radius_init, scale) variant, the initial radii and the auto choices."""
    from peft_dect.dect import decoder
    from peft_dect.dect.fit import fit_auto, fit_faithful
    from peft_dect.features import Features

    (tr, y_tr), (dv, y_dv), (te, y_te) = train, dev, test
    rec = {
        "calibrated_zero_shot": float(((te.label_logits - content_free).argmax(-1) == y_te).float().mean()),
        "hidden_norm": float(tr.hidden.norm(dim=-1).mean()),
        "test_size": int(y_te.numel()),
    }
    for scale in SCALES:

        def scaled(f, scale=scale):
            return Features(f.hidden * scale, f.label_logits)

        for init in INITS:
            cfg = SimpleNamespace(
                lam=None, calibrate=True, epochs=30, learning_rate=0.01, seed=0, decoder_dim=128, radius_init=init
            )
            start, _ = decoder.train(
                scaled(tr).hidden, y_tr, torch.zeros(len(y_tr), num_classes), torch.zeros(1),
                num_classes=num_classes, decoder_dim=128, epochs=0, lr=0.01, seed=0, radius_init=init,
            )  # fmt: skip
            key = f"{init}@{scale:g}"
            rec[f"initial_radii/{key}"] = [round(float(r), 4) for r in start.radii[0]]
            faithful = fit_faithful(scaled(tr), y_tr, content_free, cfg, num_classes)
            rec[f"faithful/{key}"] = accuracy(faithful, scaled(te), y_te, content_free)
            auto = fit_auto(scaled(tr), y_tr, content_free, cfg, num_classes, scaled(dv), y_dv)
            rec[f"auto/{key}"] = accuracy(auto, scaled(te), y_te, content_free)
            rec[f"auto_choice/{key}"] = [auto.calibrate, auto.epochs, auto.lam]
    return rec


def run(args) -> dict:
    from peft import get_peft_model

    from peft_dect import DecTConfig
    from peft_dect.embedded import load_smollm2
    from peft_dect.tasks import get_task, load_task

    model, tokenizer = load_smollm2()
    peft_model, records = None, []
    for task in args.tasks:
        spec = get_task(task)
        template, words = prompt_of(spec)
        cfg = DecTConfig(template=template, label_words=words, text_column="text_a", text_pair_column="text_b")
        if peft_model is None:
            peft_model = get_peft_model(model, cfg, adapter_name=spec.name)
            peft_model.base_model.use_cache_dir(args.cache)
        else:
            peft_model.add_adapter(spec.name, cfg)
        peft_model.set_adapter(spec.name)
        bb = peft_model.base_model.backbone(tokenizer)
        bb.show_progress = False
        pair = bb.template.is_pair
        splits = {seed: load_task(task, args.data, k=16, seed=seed) for seed in args.seeds}
        content_free = bb.extract([""], [""] if pair else None).label_logits[0]
        for seed in args.seeds:
            data = splits[seed]
            train = extract(bb, rows_of(data["train"], pair), pair)
            dev = extract(bb, rows_of(data["validation"], pair), pair)
            test = extract(bb, test_rows(splits, seed, pair, args.test_size), pair)
            rec = {"task": spec.name, "seed": seed}
            rec.update(evaluate_seed(train, dev, test, content_free, len(words)))
            records.append(rec)
            print(json.dumps({k: v for k, v in rec.items() if "/" not in k or k.split("/")[0] in MODES}), flush=True)
        write(args, summary(args, records))  # partial results survive an interrupted run
    if args.banking77:
        records.append(banking77_record(args, model, tokenizer, peft_model))
        write(args, summary(args, records))
    return summary(args, records)


def banking77_record(args, model, tokenizer, peft_model) -> dict:
    """BANKING77: seed 13's 16 shots per intent and dev split (`sample_k_shot`), intent names as label words
    (exact multi-token scores), a seeded sample of `--banking77-test-size` test rows."""
    from peft import get_peft_model

    from peft_dect import DecTConfig
    from peft_dect.prompting import label_words_from_names
    from peft_dect.tasks import BANKING77_CAUSAL, load_banking77, sample_k_shot

    data = load_banking77(args.banking77)
    words = label_words_from_names(data["train"])
    cfg = DecTConfig(template=BANKING77_CAUSAL, label_words=words, text_column="text")
    if peft_model is None:  # the adapter name "default", as benchmarks.banking77's: the same feature cache keys
        peft_model = get_peft_model(model, cfg)
        peft_model.base_model.use_cache_dir(args.cache)
    else:
        peft_model.add_adapter("BANKING77", cfg)
        peft_model.set_adapter("BANKING77")
    bb = peft_model.base_model.backbone(tokenizer)
    bb.show_progress = False
    split = sample_k_shot(data["train"], 16, 13)
    test = data["test"].shuffle(seed=0).select(range(args.banking77_test_size))

    def rows(ds):
        return list(zip(ds["text"], [None] * len(ds), ds["label"]))

    parts = [extract(bb, rows(ds), False) for ds in (split["train"], split["validation"], test)]
    content_free = bb.extract([""]).label_logits[0]
    rec = {"task": "BANKING77", "seed": 13, **evaluate_seed(*parts, content_free, len(words))}
    print(json.dumps({k: v for k, v in rec.items() if "/" not in k or k.split("/")[0] in MODES}), flush=True)
    return rec


def write(args, result: dict) -> None:
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


def summary(args, records: list) -> dict:
    import peft_dect

    return {
        "benchmark": "radius_init",
        "model": "SmolLM2-135M-Instruct (Q4_1 GGUF de-quantised to float32)",
        "shots": 16,
        "seeds": list(args.seeds),
        "test_size_cap": args.test_size,
        "scales": list(SCALES),
        "snli_test": "the other seeds' train and dev rows not in this seed's train or dev split",
        "versions": {"peft_dect": peft_dect.__version__, "torch": torch.__version__},
        "records": records,
    }


def _mean(values) -> str:
    return f"{100 * statistics.mean(values):.1f}"


def table(result: dict) -> str:
    """Markdown table: mean test accuracy over seeds per task and variant, and the mean over tasks."""
    recs = result["records"]
    tasks = list(dict.fromkeys(r["task"] for r in recs))
    columns = [("calibrated_zero_shot", "calibrated zero-shot")]
    for mode in MODES:
        for init in INITS:
            for scale in SCALES:
                columns.append((f"{mode}/{init}@{scale:g}", f"{mode}, {init}, h x{scale:g}"))
    rows = ["| task | seeds | " + " | ".join(c[1] for c in columns) + " |", "|---|---|" + "---|" * len(columns)]
    per_task = {}
    for task in tasks:
        sub = [r for r in recs if r["task"] == task]
        per_task[task] = {key: statistics.mean(r[key] for r in sub) for key, _ in columns}
        rows.append(f"| {task} | {len(sub)} | " + " | ".join(_mean(r[key] for r in sub) for key, _ in columns) + " |")
    rows.append("| mean | | " + " | ".join(_mean(per_task[t][key] for t in tasks) for key, _ in columns) + " |")
    radii = []
    for task in tasks:
        sub = [r for r in recs if r["task"] == task]
        parts = []
        for init in INITS:
            for scale in SCALES:
                values = [v for r in sub for v in r[f"initial_radii/{init}@{scale:g}"]]
                parts.append(f"{init} x{scale:g}: {min(values):.2f}-{max(values):.2f}")
        norm = statistics.mean(r["hidden_norm"] for r in sub)
        radii.append(f"- {task} (mean ||h|| {norm:.1f}): initial radii " + ", ".join(parts))
    return "\n".join(rows) + "\n\n" + "\n".join(radii)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/fewshot")
    parser.add_argument("--tasks", nargs="*", default=list(TASKS))
    parser.add_argument("--banking77", help="BANKING77 folder: adds its row (seed 13; slow: exact multi-token scores)")
    parser.add_argument("--banking77-test-size", type=int, default=1500)
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--test-size", type=int, default=500, help="seeded sample of the test set per task")
    parser.add_argument("--cache", default=str(Path(__file__).parent / ".cache"))
    parser.add_argument("--out", default=str(RESULTS / "radius_init.json"))
    parser.add_argument("--table", action="store_true", help="print the README table of --out and exit")
    args = parser.parse_args(argv)
    if args.table:
        print(table(json.loads(Path(args.out).read_text())))
        return
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    result = run(args)
    write(args, result)
    print(table(result))


if __name__ == "__main__":
    main()
