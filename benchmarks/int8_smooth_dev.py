"""SmoothQuant's migration strength for int8 SmolLM2 on dev sentences: how close int8 hidden states stay to float32.

    nice -n 5 python -m benchmarks.int8_smooth_dev --data ../shared/data/fewshot

For each alpha (and without smoothing), with one input scale per layer (the outlier layers kept in float32 by
`quantize_int8`'s threshold, or every body layer int8) and with one input scale per token (every body layer int8):
the mean cosine between the int8 and float32 hidden states at DecT's prediction position (`benchmarks.speed`'s
template) and the largest difference of the label words' log-probabilities, on the dev sentences of SST-2 and CR
(seed 13's 16-shot dev files; no label read, no test data). Calibration: 8 training sentences, as `benchmarks.speed`
uses (`--builtin-calibration`: `quantize.CALIBRATION_TEXTS` instead). `peft_dect.quantize.SMOOTH_ALPHA` and
`SMOOTH_ALPHA_PER_TOKEN` were chosen from this table; results go to `benchmarks/results/int8_smooth_dev.json`.
"""

from __future__ import annotations

import argparse
import json
import math
import warnings
from pathlib import Path

import torch

from .dect_bench import LABEL_WORDS, TEMPLATE


RESULTS = Path(__file__).parent / "results"
ALPHAS = (None, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def features(model, tokenizer, prompts: list[str], word_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden state at the last position, label-word log-probabilities) per prompt, one pass each."""
    hidden, scores = [], []
    with torch.no_grad():
        for prompt in prompts:
            out = model(**tokenizer(prompt, return_tensors="pt"), output_hidden_states=True)
            hidden.append(out.hidden_states[-1][0, -1].float())
            scores.append(out.logits[0, -1].float().log_softmax(-1)[word_ids])
    return torch.stack(hidden), torch.stack(scores)


def agreement(scores: torch.Tensor, ref: torch.Tensor) -> float:
    """Share of prompts whose two label words keep float32's order."""
    return float(((scores[:, 1] - scores[:, 0]).sign() == (ref[:, 1] - ref[:, 0]).sign()).float().mean())


def run(args) -> dict:
    from peft_dect.embedded import load_smollm2
    from peft_dect.quantize import CALIBRATION_TEXTS, OUTLIER_THRESHOLD, quantize_int8
    from peft_dect.tasks import load_task

    warnings.simplefilter("ignore")  # torch.ao's deprecation notices
    base, tokenizer = load_smollm2()
    word_ids = [tokenizer(" " + words[0], add_special_tokens=False)["input_ids"][0] for words in LABEL_WORDS.values()]
    splits = {task: load_task(task, args.data, k=16, seed=13) for task in args.tasks}
    calibration = list(splits[args.tasks[0]]["train"]["text_a"][:8])
    if args.builtin_calibration:  # what quantize_int8 measures on when given no texts
        calibration = list(CALIBRATION_TEXTS)
    prompts = [
        TEMPLATE.replace("{text_a}", t).replace(" {mask}", "")
        for s in splits.values()
        for t in s["validation"]["text_a"]
    ]
    ref_hidden, ref_scores = features(base, tokenizer, prompts, word_ids)
    rows = []
    settings = [("per_tensor", threshold) for threshold in (OUTLIER_THRESHOLD, math.inf)] + [("per_token", math.inf)]
    settings = [(a, t) for a, t in settings if a in args.activations]
    for alpha in args.alphas:
        for activations, threshold in settings:
            kwargs = dict(smooth_alpha=alpha, outlier_threshold=threshold, activations=activations)
            model, kept = quantize_int8(base, tokenizer, calibration, **kwargs)
            hidden, scores = features(model, tokenizer, prompts, word_ids)
            row = {
                "alpha": alpha,
                "activations": activations,
                "outlier_layers": "every body layer int8" if math.isinf(threshold) else "kept in float32",
                "float32_layers": len(kept),
                "cosine": float(torch.nn.functional.cosine_similarity(hidden, ref_hidden).mean()),
                "max_label_score_difference": float((scores - ref_scores).abs().max()),
                "label_margin_agreement": float(
                    ((scores[:, 1] - scores[:, 0]).sign() == (ref_scores[:, 1] - ref_scores[:, 0]).sign())
                    .float()
                    .mean()
                ),
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    source = "quantize.CALIBRATION_TEXTS" if args.builtin_calibration else f"8 {args.tasks[0]} training sentences"
    return {
        "benchmark": "int8_smooth_dev",
        "tasks": args.tasks,
        "sentences": len(prompts),
        "calibration": source,
        "rows": rows,
    }


def table(result: dict) -> str:
    lines = [
        "| SmoothQuant alpha | input scales | outlier layers | float32 layers | hidden-state cosine "
        "| max label-score difference | same label-word order |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        alpha = "none" if r["alpha"] is None else f"{r['alpha']:g}"
        scales = "per token" if r.get("activations") == "per_token" else "per layer input"
        lines.append(
            f"| {alpha} | {scales} | {r['outlier_layers']} | {r['float32_layers']} | {r['cosine']:.4f} "
            f"| {r['max_label_score_difference']:.2f} | {100 * r['label_margin_agreement']:.1f} % |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/fewshot")
    parser.add_argument("--tasks", nargs="+", default=["SST-2", "cr"])
    parser.add_argument("--out", default=str(RESULTS / "int8_smooth_dev.json"))
    parser.add_argument(
        "--activations",
        nargs="+",
        default=["per_tensor", "per_token"],
        help="input scales to study; rows of the others already in --out are kept",
    )
    parser.add_argument("--alphas", nargs="+", type=lambda v: None if v == "none" else float(v), default=ALPHAS)
    parser.add_argument(
        "--builtin-calibration",
        action="store_true",
        help="calibrate on quantize.CALIBRATION_TEXTS (what quantize_int8 uses without texts of its own)",
    )
    parser.add_argument("--table", action="store_true", help="print the table of --out and exit")
    args = parser.parse_args(argv)
    if args.table:
        print(table(json.loads(Path(args.out).read_text())))
        return
    result = run(args)
    out = Path(args.out)
    if out.exists():  # keep the rows of the settings not run this time
        old = [
            r
            for r in json.loads(out.read_text())["rows"]
            if r.get("activations", "per_tensor") not in args.activations
        ]
        result["rows"] = old + result["rows"]
    out.write_text(json.dumps(result, indent=1))
    print(table(result))


if __name__ == "__main__":
    main()
