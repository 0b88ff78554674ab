"""The embedded demo: DecT on SST-2 16-shot (seed 13) with SmolLM2-135M-Instruct, fully offline.

Run it with ``python -m peft_dect.demo``. It prints test accuracy of the uncalibrated and calibrated zero-shot
prompt and of DecT, and how the fit time splits between the model pass and decoder training.
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings

import torch
from peft import get_peft_model

from .dect import DecTConfig
from .embedded import load_smollm2
from .tasks import load_task, packaged_data_dir


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m peft_dect.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--test-size", type=int, default=None, help="evaluate on the first N test sentences only")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")

    t0 = time.perf_counter()
    model, tokenizer = load_smollm2()
    print(f"Loaded SmolLM2-135M-Instruct in {time.perf_counter() - t0:.1f} s")
    data = load_task("SST-2", packaged_data_dir(), k=16, seed=13)
    test = data["test"] if args.test_size is None else data["test"].select(range(args.test_size))
    labels = torch.tensor(test["label"])
    config = DecTConfig(
        template="{text_a} In summary, it was {mask}", label_words={"negative": ["bad"], "positive": ["great"]}
    )
    dect = get_peft_model(model, config)

    fit = dect.fit(data["train"], tokenizer=tokenizer, eval_dataset=data["validation"], show_progress=not args.quiet)
    t1 = time.perf_counter()
    logits = dect.base_model.predict_logits(test, show_progress=not args.quiet)
    predict_seconds = time.perf_counter() - t1
    results = {
        "zero-shot": dect.base_model.zero_shot_logits(test, calibrate=False),
        "calibrated zero-shot": dect.base_model.zero_shot_logits(test, calibrate=True),
        "DecT": logits,
    }
    print(f"\nSST-2 16-shot (seed 13), {len(test)} test sentences, template {config.template!r}, bad/great")
    out = {}
    for name, scores in results.items():
        out[name] = float((scores.argmax(-1) == labels).float().mean())
        print(f"  {name:<22} accuracy {100 * out[name]:5.1f}")
    print(
        f"\nDecT fit: {fit['model_passes']} model passes in {fit['feature_seconds']:.2f} s, decoder "
        f"{fit['decoder_seconds']:.3f} s (auto mode chose calibrate={fit['calibrate']}, epochs={fit['epochs']}, "
        f"lam={fit['lam']:g} on {fit['selected_on']})"
    )
    print(f"DecT prediction: {len(test)} sentences in {predict_seconds:.1f} s")
    return out


if __name__ == "__main__":
    main()
