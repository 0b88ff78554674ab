"""Content-free calibration (Zhao et al., 2021), as DecT uses it.

The label-word probabilities of an input are divided by those of a content-free input (the template with empty text
fields), which removes the model's prior preference for some label words. In log space this is a subtraction.
"""

from __future__ import annotations

import torch

from .template import Template


def content_free_texts(template: Template) -> tuple[str, str | None]:
    """The (text_a, text_b) of the content-free input: empty strings for every field the template uses."""
    return "", ("" if template.is_pair else None)


def calibrated_probs(label_logits: torch.Tensor, content_free_logits: torch.Tensor | None) -> torch.Tensor:
    """Class probabilities q from class log-scores (N, C), divided by the content-free ones when given."""
    if content_free_logits is not None:
        label_logits = label_logits - content_free_logits.to(label_logits)
    return torch.softmax(label_logits.float(), dim=-1)
