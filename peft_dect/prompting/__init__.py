"""Prompting pieces shared by every peft-dect method: templates, label words, calibration, demonstrations."""

from .calibration import calibrated_probs, content_free_texts
from .demonstrations import Demonstrations
from .lmbff_template import from_lmbff, parse_lmbff_template
from .template import Template
from .verbalizer import Verbalizer, label_log_probs, label_name_words, label_words_from_names, normalize_label_words


__all__ = [
    "Demonstrations",
    "Template",
    "Verbalizer",
    "calibrated_probs",
    "content_free_texts",
    "from_lmbff",
    "label_log_probs",
    "label_name_words",
    "label_words_from_names",
    "normalize_label_words",
    "parse_lmbff_template",
]
