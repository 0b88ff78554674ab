"""Dev-split sweep of the LoRA learning rate for prompt-based fine-tuning (SmolLM2, SST-2 seed 13; no test set).

A plain loop doing what `LMBFFModel.forward` and the Trainer do (label-word log-probabilities at the prediction
position, cross-entropy, AdamW, linear decay to 0), written before the Trainer path existed; its results are in
`benchmarks/results/lmbff_ft_dev.json`.

    python -m benchmarks.lmbff_ft_dev_loop --data ../shared/data/fewshot --out /tmp/lmbff_ft_dev_loop.json
"""

from __future__ import annotations

import argparse
import json
import random
import time

import torch


def run(model, tokenizer, data_dir: str, task: str, seed: int, lr: float, rank: int, steps=48, every=8, top=8):
    """Train LoRA on the top `top` layers for `steps` steps of 8; the dev accuracy every `every` steps."""
    from peft import LoraConfig, get_peft_model

    from peft_dect import Backbone, Template, Verbalizer
    from peft_dect.tasks import get_task, load_task

    spec = get_task(task)
    data = load_task(task, data_dir, 16, seed)
    template = Template(spec.causal_template)
    verbalizer = Verbalizer.from_words(spec.label_words, tokenizer, space_before=template.space_before_mask)
    torch.manual_seed(seed)
    layers = model.config.num_hidden_layers
    lora = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules=["q_proj", "v_proj"],
        lora_dropout=0.0,
        layers_to_transform=list(range(layers - top, layers)),
    )
    peft_model = get_peft_model(model, lora)
    bb = Backbone(peft_model.get_base_model(), tokenizer, template, verbalizer, batch_size=16, show_progress=False)

    def ids(split):
        return bb.tokenize(data[split]["text_a"], data[split]["text_b"] if template.is_pair else None)

    train, dev = ids("train"), ids("validation")
    y_train, y_dev = data["train"]["label"], torch.tensor(data["validation"]["label"])
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / steps)

    def dev_accuracy() -> float:
        peft_model.eval()
        pred = torch.empty(len(dev), dtype=torch.long)
        with torch.no_grad():
            for start in range(0, len(dev), 16):
                rows = list(range(start, min(start + 16, len(dev))))
                pred[rows] = bb.forward(**bb.collate([dev[i] for i in rows])).label_logits.argmax(-1)
        peft_model.train()
        return float((pred == y_dev).float().mean())

    curve = {0: dev_accuracy()}
    rng, order, start = random.Random(seed), [], time.time()
    peft_model.train()
    for step in range(1, steps + 1):
        if len(order) < 8:
            fresh = list(range(len(train)))
            rng.shuffle(fresh)
            order += fresh
        batch, order = order[:8], order[8:]
        logits = bb.forward(**bb.collate([train[i] for i in batch])).label_logits
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor([y_train[i] for i in batch]))
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        if step % every == 0:
            curve[step] = dev_accuracy()
    record = {"task": task, "seed": seed, "lr": lr, "r": rank, "top_layers": top, "steps": steps}
    record.update(dev_curve=curve, seconds=time.time() - start)
    return record, peft_model.unload()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/fewshot")
    parser.add_argument("--out", required=True)
    parser.add_argument("--lrs", nargs="+", type=float, default=[1e-4, 4e-4, 1e-3])
    args = parser.parse_args()
    from peft_dect.embedded import load_smollm2

    model, tokenizer = load_smollm2()
    results = []
    for lr in args.lrs:
        record, model = run(model, tokenizer, args.data, "SST-2", 13, lr, 8)
        results.append(record)
        with open(args.out, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
