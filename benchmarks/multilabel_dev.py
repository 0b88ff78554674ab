"""Multi-label auto mode's epoch grid, learning rate and score scale, chosen on held-out training data only.

    python -m benchmarks.multilabel_dev --data ../shared/data/nlupp

NLU++ banking, the low-data setting's training folds 0-4 (about 100 sentences each, 48 intents), SmolLM2-135M-Instruct
with `tasks.NLUPP_CAUSAL` and the intents' names as label words. For each candidate (epoch grid, learning rate,
`multilabel.ML_SCORE_SCALE`)
DecT multi-label is fitted through the public `fit`, and the figure is auto mode's own held-out micro-F1 (4-fold
cross-validation of the training fold): no test fold is read. Results: `benchmarks/results/multilabel_dev.json`.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


OUT = Path(__file__).parent / "results" / "multilabel_dev.json"
CANDIDATES = {  # name: (epoch grid, learning rate, score scale)
    "epochs (30, 100, 300), lr 0.01, scale 1": ((30, 100, 300), 0.01, 1.0),
    "epochs (100, 300, 1000), lr 0.01, scale 1": ((100, 300, 1000), 0.01, 1.0),
    "epochs (30, 100, 300), lr 0.03, scale 1": ((30, 100, 300), 0.03, 1.0),
    "epochs (100, 300, 1000), lr 0.03, scale 1": ((100, 300, 1000), 0.03, 1.0),
    "epochs (30, 100, 300), lr 0.01, scale 3": ((30, 100, 300), 0.01, 3.0),
    "epochs (30, 100, 300), lr 0.01, scale 10": ((30, 100, 300), 0.01, 10.0),
    "epochs (30, 100, 300), lr 0.01, scale 20": ((30, 100, 300), 0.01, 20.0),
    "epochs (30, 100, 300), lr 0.01, scale 40": ((30, 100, 300), 0.01, 40.0),
    "epochs (100, 300, 1000), lr 0.01, scale 10": ((100, 300, 1000), 0.01, 10.0),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the nlupp folder (ontology.json, banking/fold*.json)")
    parser.add_argument("--folds", default="0,1,2,3,4")
    parser.add_argument("--cache", default=str(Path(__file__).parent / ".cache"), help="feature cache folder")
    args = parser.parse_args(argv)
    from peft import get_peft_model

    from peft_dect import DecTConfig
    from peft_dect.dect import multilabel
    from peft_dect.embedded import load_smollm2
    from peft_dect.prompting import label_words_from_names
    from peft_dect.tasks import NLUPP_CAUSAL, load_nlupp

    folds = [int(f) for f in args.folds.split(",")]
    model, tokenizer = load_smollm2()
    data = load_nlupp(args.data, folds=folds)
    classes = data.classes
    config = DecTConfig(template=NLUPP_CAUSAL, label_words=label_words_from_names(classes), multi_label=True,
                        label_column="labels", text_column="text")  # fmt: skip
    peft_model = get_peft_model(model, config)
    peft_model.base_model.use_cache_dir(args.cache)
    results: dict[str, dict] = {}
    for name, (epochs, lr, scale) in CANDIDATES.items():
        multilabel.ML_AUTO_EPOCHS, multilabel.ML_SCORE_SCALE = epochs, scale
        peft_model.peft_config["default"].learning_rate = lr
        per_fold = {}
        for fold in folds:
            rows = [i for i, f in enumerate(data.columns["fold"]) if f == fold]
            train = {
                "text": [data.columns["text"][i] for i in rows],
                "labels": [data.columns["labels"][i] for i in rows],
            }
            report = peft_model.fit(train, tokenizer, show_progress=False)
            per_fold[fold] = {
                k: report[k] for k in ("heldout_micro_f1", "epochs", "lam", "calibrate", "decoder_seconds")
            }
        values = [v["heldout_micro_f1"] for v in per_fold.values()]
        results[name] = {"mean_heldout_micro_f1": statistics.mean(values), "folds": per_fold}
        seconds = statistics.mean(v["decoder_seconds"] for v in per_fold.values())
        print(f"{name}: held-out micro-F1 {100 * statistics.mean(values):.1f} (decoder {seconds:.1f} s)", flush=True)
    OUT.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
