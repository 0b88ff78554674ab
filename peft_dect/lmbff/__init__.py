"""LM-BFF (Gao, Fisch and Chen, ACL 2021): prompt-based fine-tuning, automatic label words and templates."""

from .config import LMBFFConfig
from .model import BestOnDevCallback, LMBFFModel
from .search import (
    LabelWordSearch,
    TemplateSearch,
    generate_templates,
    label_word_scores,
    rank_templates,
    search_label_words,
    search_templates,
    vocab_log_probs,
)


__all__ = [
    "BestOnDevCallback",
    "LMBFFConfig",
    "LMBFFModel",
    "LabelWordSearch",
    "TemplateSearch",
    "generate_templates",
    "label_word_scores",
    "rank_templates",
    "search_label_words",
    "search_templates",
    "vocab_log_probs",
]
