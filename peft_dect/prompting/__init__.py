"""Prompting pieces shared by every peft-dect method: templates, label words and calibration."""

from .calibration import calibrated_probs, content_free_texts
from .template import Template
from .verbalizer import Verbalizer, label_log_probs, normalize_label_words


__all__ = [
    "Template",
    "Verbalizer",
    "calibrated_probs",
    "content_free_texts",
    "label_log_probs",
    "normalize_label_words",
]
