"""Configuration of DecT adapters (Decoder Tuning, Cui et al., ACL 2023)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from peft.config import PeftConfig
from peft.utils.peft_types import PeftType, TaskType

from ..prompting import Template, normalize_label_words
from ..prompting.demonstrations import FILTERS
from ..prompting.verbalizer import AGGREGATIONS, MULTI_TOKEN_RULES
from ..registry import FEW_SHOT_CLS, extend_enum


MODES = ("auto", "faithful")


@dataclass
class DecTConfig(PeftConfig):
    """Configuration of a DecT adapter: prompt, label words and the decoder trained on the frozen model's features.

    The model is queried once per input; a small decoder (projection `W`, fixed random class prototypes, learned
    radii) scores the hidden state at the prediction position and adds `lam` times the calibrated label-word
    probabilities: ``score_k = -||normalize(W h) - p_k|| + r_k + lam * q_k``.
    """

    template: str = field(
        default="{text_a} In summary, it was {mask}.",
        metadata={"help": "Prompt with {text_a}, optional {text_b} and one {mask} where the label word goes."},
    )
    label_words: dict = field(
        default_factory=dict,
        metadata={"help": "Class name -> list of label words, e.g. {'negative': ['bad'], 'positive': ['great']}."},
    )
    decoder_dim: int = field(default=128, metadata={"help": "Dimension of the projection W and class prototypes."})
    mode: str = field(
        default="auto",
        metadata={
            "help": "'faithful': the paper's settings (lam = 1/shots unless set, `epochs`, calibration as set). "
            "'auto': choose lam, epochs and calibration by held-out accuracy on k-fold cross-validation of the "
            "training set plus the fit's eval_dataset when given; uses cached features, so no extra model pass."
        },
    )
    lam: float | None = field(
        default=None, metadata={"help": "Weight of the calibrated label-word probabilities; None means 1/shots."}
    )
    calibrate: bool = field(
        default=True, metadata={"help": "Divide label-word probabilities by those of the content-free input."}
    )
    epochs: int = field(default=30, metadata={"help": "Full-batch Adam epochs of decoder training."})
    learning_rate: float = field(default=0.01, metadata={"help": "Adam learning rate of the decoder."})
    seed: int = field(default=0, metadata={"help": "Seed of the projection and prototype initialisation."})
    label_word_aggregation: str = field(
        default="mean", metadata={"help": "How several words of a class combine: 'mean' of log-probs or 'max'."}
    )
    multi_token: str = field(
        default="first",
        metadata={"help": "Label words of several tokens: 'first' scores the first token (with a warning), 'error'."},
    )
    max_length: int | None = field(
        default=None, metadata={"help": "Token budget of a prompt; text fields are truncated to fit it."}
    )
    text_column: str | None = field(
        default=None, metadata={"help": "Dataset column of the first text; None guesses text/sentence/sentence1."}
    )
    text_pair_column: str | None = field(
        default=None, metadata={"help": "Dataset column of the second text, for templates with {text_b}."}
    )
    label_column: str = field(default="label", metadata={"help": "Dataset column of the labels."})
    demonstrations: int = field(
        default=0,
        metadata={
            "help": "LM-BFF demonstrations: the number of demonstration sets sampled per input and averaged (0: no "
            "demonstrations). Each set holds `demo_per_class` solved training examples of every class; fit() "
            "records its training data as the demonstration pool (saved in this config)."
        },
    )
    demo_per_class: int = field(default=1, metadata={"help": "Demonstrations of each class in a set."})
    demo_filter: str = field(
        default="random",
        metadata={
            "help": "'random': sample from all training examples; 'similar': from the most similar half of each "
            "class by a sentence encoder (all-MiniLM-L6-v2 unless model.demo_encoder is set), as LM-BFF's filter."
        },
    )
    demo_pool: dict | None = field(
        default=None,
        metadata={"help": "The demonstrations' training examples {'text_a', 'text_b', 'label'}; set by fit()."},
    )
    base_hidden_size: int | None = field(
        default=None, metadata={"help": "Hidden size of the base model; set by get_peft_model, checked on load."}
    )
    base_vocab_size: int | None = field(
        default=None, metadata={"help": "Vocabulary size of the base model; set by get_peft_model, checked on load."}
    )

    # The tuner finds the LM head itself; peft's injection code reads this attribute.
    target_modules: ClassVar[None] = None

    def __post_init__(self) -> None:
        if self.task_type is None:
            self.task_type = extend_enum(TaskType, FEW_SHOT_CLS)
        super().__post_init__()
        self.peft_type = extend_enum(PeftType, "DECT")
        Template(self.template)  # validates placeholders and the single {mask}
        self.label_words = normalize_label_words(self.label_words)
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}.")
        if self.label_word_aggregation not in AGGREGATIONS:
            raise ValueError(
                f"label_word_aggregation must be one of {AGGREGATIONS}, got {self.label_word_aggregation!r}."
            )
        if self.multi_token not in MULTI_TOKEN_RULES:
            raise ValueError(f"multi_token must be one of {MULTI_TOKEN_RULES}, got {self.multi_token!r}.")
        if self.decoder_dim < 1 or self.epochs < 0 or self.learning_rate <= 0:
            raise ValueError("decoder_dim must be >= 1, epochs >= 0 and learning_rate > 0.")
        if self.lam is not None and self.lam < 0:
            raise ValueError(f"lam must be >= 0, got {self.lam}.")
        if not isinstance(self.demonstrations, int) or self.demonstrations < 0:
            raise ValueError(f"demonstrations must be an integer >= 0 (sets per input), got {self.demonstrations!r}.")
        if not isinstance(self.demo_per_class, int) or self.demo_per_class < 1:
            raise ValueError(f"demo_per_class must be an integer >= 1, got {self.demo_per_class!r}.")
        if self.demo_filter not in FILTERS:
            raise ValueError(f"demo_filter must be one of {FILTERS}, got {self.demo_filter!r}.")
        if self.demo_pool is not None:
            pool = self.demo_pool
            if not isinstance(pool, dict) or not {"text_a", "label"} <= set(pool):
                raise ValueError("demo_pool must be a dict with 'text_a', 'label' (and 'text_b' for pairs) lists.")

    @property
    def classes(self) -> list[str]:
        return list(self.label_words)
