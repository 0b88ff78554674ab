"""LM-BFF (Gao, Fisch, Chen, ACL 2021): automatic label words and templates; prompt-based fine-tuning."""

from .search import (
    LabelWordSearch,
    TemplateSearch,
    label_word_scores,
    rank_templates,
    search_label_words,
    vocab_log_probs,
)


__all__ = [
    "LabelWordSearch",
    "TemplateSearch",
    "label_word_scores",
    "rank_templates",
    "search_label_words",
    "vocab_log_probs",
]
