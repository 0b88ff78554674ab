"""The grid's methods that train the language model itself: prompt tuning and LM-BFF prompt-based fine-tuning (LoRA).

Both run on their own copy of SmolLM2 (the shared one carries DecT adapters), with the budgets their benchmarks chose
on dev splits for 2 CPU cores (`benchmarks/prompt_tuning_bench.py`, `benchmarks/lmbff_ft_bench.py`), and, like
in-context learning, score a seeded subsample of `test_cap` rows of the capped test sample: every forward pass here
runs the whole model, with no feature cache to share across methods and seeds.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch

from .data import TEST_SAMPLE_SEED, CellData, capped_sample
from .methods import MethodResult


logger = logging.getLogger(__name__)


def _load_smollm2():
    from peft_dect.embedded import load_smollm2

    return load_smollm2()


class _TrainsTheModel:
    """Shared set-up: one base model loaded on first use, the test subsample, the Trainer's scratch folder."""

    name = ""

    def __init__(self, test_cap: int | None = 40, loader: Callable[[], tuple[Any, Any]] = _load_smollm2) -> None:
        self.test_cap = test_cap
        self.loader = loader
        self.base = None
        self.tokenizer = None
        self.scratch = tempfile.mkdtemp(prefix=f"grid-{self.name}-")

    def _model(self):
        if self.base is None:
            self.base, self.tokenizer = self.loader()
        return self.base, self.tokenizer

    def _test(self, data: CellData):
        index = capped_sample(len(data.test), self.test_cap, seed=TEST_SAMPLE_SEED)
        return data.test.select(index), index

    def _subsample_note(self, data: CellData, index: list[int]) -> str:
        return f"{len(index)} of the {len(data.test)} capped test rows (seed {TEST_SAMPLE_SEED})"

    def _arguments(self, seed: int, **kwargs):
        from transformers import TrainingArguments

        base = dict(
            output_dir=self.scratch,
            per_device_train_batch_size=8,
            per_device_eval_batch_size=16,
            warmup_steps=0,
            weight_decay=0.0,
            report_to=[],
            save_strategy="no",
            logging_strategy="no",
            use_cpu=True,
            seed=seed,
            disable_tqdm=True,
            dataloader_num_workers=0,
        )
        return TrainingArguments(**(base | kwargs))


class PromptTuning(_TrainsTheModel):
    """Prompt tuning (Lester et al.): a 20-token soft prompt, class-label initialisation, trained as a label-word
    classifier by `transformers.Trainer` for 2 epochs at learning rate 0.01 (the budget prompt_tuning_bench chose on
    SST-2 seed 13's dev split); the frozen model and the label words do the rest."""

    name = "prompt_tuning"
    LENGTH, LR, EPOCHS = 20, 0.01, 2

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.prompt_model = None

    def run(self, data: CellData) -> MethodResult:
        from transformers import Trainer

        from peft_dect.classifier import LabelWordClassifier
        from peft_dect.prompt_tuning import get_prompt_tuning_model
        from peft_dect.tasks import get_task

        base, tok = self._model()
        spec = get_task(data.task)
        template = spec.causal_template
        name = f"{data.task}-{data.shots}-{data.seed}"
        target = self.prompt_model if self.prompt_model is not None else base
        torch.manual_seed(data.seed)
        self.prompt_model = get_prompt_tuning_model(
            target,
            tok,
            adapter_name=name,
            template=template,
            label_words=spec.label_words,
            init="class_label",
            num_virtual_tokens=self.LENGTH,
            seed=data.seed,
        )
        self.prompt_model.set_adapter(name)
        columns = {"text_column": "text_a", "text_pair_column": "text_b" if "{text_b}" in template else None}
        clf = LabelWordClassifier(self.prompt_model, tok, template, spec.label_words, show_progress=False, **columns)
        args = self._arguments(
            data.seed, num_train_epochs=self.EPOCHS, learning_rate=self.LR, lr_scheduler_type="constant"
        )
        trainer = Trainer(
            model=clf, args=args, train_dataset=clf.prepare_dataset(data.train), data_collator=clf.collate
        )
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        for param in clf.parameters():  # this cell's prompt is trained: later cells train only their own
            param.requires_grad_(False)
        test, index = self._test(data)
        pred = clf.predict_logits(test).argmax(-1).tolist()
        extra = {
            "budget": f"{self.EPOCHS} epochs, lr {self.LR}, batch 8, {self.LENGTH} tokens, class-label init",
            "steps": trainer.state.global_step,
            "test_subsample": self._subsample_note(data, index),
        }
        passes = self.EPOCHS * len(data.train)  # forward and backward passes through the whole model
        return MethodResult(pred, seconds, passes, len(index), extra, test_index=index)


class LMBFFFineTuning(_TrainsTheModel):
    """LM-BFF prompt-based fine-tuning with a LoRA adapter (rank 8 on q_proj/v_proj of the top 8 layers): 24 steps
    of batch 8 at learning rate 1e-3, linear decay, the best of the dev evaluations every 8 steps kept (LM-BFF's
    model selection); the budget lmbff_ft_bench chose on SST-2 seed 13's dev split. No demonstrations."""

    name = "lmbff_ft"
    STEPS, EVAL_EVERY, LR, RANK, TOP_LAYERS = 24, 8, 1e-3, 8, 8

    def run(self, data: CellData) -> MethodResult:
        from peft import LoraConfig
        from transformers import Trainer

        from peft_dect.lmbff import BestOnDevCallback, LMBFFConfig, LMBFFModel
        from peft_dect.tasks import get_task

        base, tok = self._model()
        spec = get_task(data.task)
        layers = base.config.num_hidden_layers
        lora = LoraConfig(
            r=self.RANK,
            lora_alpha=2 * self.RANK,
            lora_dropout=0.0,
            target_modules=["q_proj", "v_proj"],
            layers_to_transform=list(range(max(0, layers - self.TOP_LAYERS), layers)),
        )
        config = LMBFFConfig(
            template=spec.causal_template,
            label_words=spec.label_words,
            peft_config=lora,
            text_column="text_a",
            text_pair_column="text_b",
        )
        torch.manual_seed(data.seed)
        model = LMBFFModel(base, tok, config, show_progress=False)
        try:
            best = BestOnDevCallback(metric=spec.metric)
            args = self._arguments(
                data.seed,
                max_steps=self.STEPS,
                learning_rate=self.LR,
                lr_scheduler_type="linear",
                eval_strategy="steps",
                eval_steps=self.EVAL_EVERY,
            )
            trainer = Trainer(
                model=model,
                args=args,
                train_dataset=model.prepare_dataset(data.train),
                eval_dataset=model.prepare_dataset(data.dev),
                data_collator=model.collate,
                compute_metrics=model.trainer_metrics(spec.metric),
                callbacks=[best],
            )
            start = time.perf_counter()
            trainer.train()
            seconds = time.perf_counter() - start
            test, index = self._test(data)
            pred = model.predict_logits(test).argmax(-1).tolist()
        finally:
            self.base = model.model.unload()  # the base model without this cell's LoRA layers
        extra = {
            "budget": f"{self.STEPS} steps of batch 8, lr {self.LR}, LoRA rank {self.RANK} on the top "
            f"{self.TOP_LAYERS} layers, best of dev every {self.EVAL_EVERY} steps",
            "best_dev": best.best_value,
            "best_step": best.best_step,
            "test_subsample": self._subsample_note(data, index),
        }
        passes = self.STEPS * 8 + (self.STEPS // self.EVAL_EVERY) * len(data.dev)
        return MethodResult(pred, seconds, passes, len(index), extra, test_index=index)


class PromptTuningLonger(PromptTuning):
    """Prompt tuning at four times the grid's budget (8 epochs, the same learning rate): the larger budget the
    shared 2 cores allow beside the grid, to see whether the 2-epoch column undersells it."""

    name = "prompt_tuning_e8"
    EPOCHS = 8


class LMBFFFineTuningLonger(LMBFFFineTuning):
    """LM-BFF fine-tuning at four times the grid's budget: 96 steps, a dev evaluation every 24 (four, as many
    dev passes in all as the 24-step run's three plus one), the best kept."""

    name = "lmbff_ft_s96"
    STEPS, EVAL_EVERY = 96, 24


TRAINED_METHODS = {m.name: m for m in (PromptTuning, LMBFFFineTuning, PromptTuningLonger, LMBFFFineTuningLonger)}
