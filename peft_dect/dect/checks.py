"""What a DecT adapter records of the model it was made with, and the checks against it when it is used again.

An adapter records the hidden and vocabulary size of its base model and the token ids of its label words; loading
it onto another base model, or using it with a tokenizer that maps the label words elsewhere, is a clear error.
"""

from __future__ import annotations

import os

from torch import nn

from ..introspect import base_model_sizes, lm_kind
from ..prompting import Verbalizer
from ..saving import WEIGHTS_FILE, check_tensor_shapes
from .layer import DecTLayer


def output_embedding_name(model: nn.Module) -> str:
    """Module name of the LM head's output projection (e.g. 'lm_head', 'cls.predictions.decoder')."""
    lm_kind(model)  # raises a clear TypeError for models without an LM head
    out = model.get_output_embeddings()
    for name, module in model.named_modules():
        if module is out or (isinstance(module, DecTLayer) and module.base_layer is out):
            return name
    raise TypeError(f"Could not locate the output embeddings of {type(model).__name__} among its modules.")


def check_base_model(model: nn.Module, config) -> None:
    """Record the base model's sizes in a new config; refuse an adapter made for another base model."""
    hidden, vocab = base_model_sizes(model)
    recorded = config.recorded
    if recorded.hidden_size is None and recorded.vocab_size is None:
        recorded.hidden_size, recorded.vocab_size = hidden, vocab
        return
    if (recorded.hidden_size, recorded.vocab_size) != (hidden, vocab):
        raise ValueError(
            f"This DecT adapter was made for a base model with hidden size {recorded.hidden_size} and "
            f"vocabulary {recorded.vocab_size}, but {type(model).__name__} has hidden size {hidden} and "
            f"vocabulary {vocab}. Load it onto its base model ({config.base_model_name_or_path or 'see its card'}); "
            "a DecTConfig records the first base model it is used with, so give another base model a new config."
        )


def check_label_token_ids(config, verbalizer: Verbalizer, *, record: bool) -> None:
    """Record the label words' token ids (at fit time) or refuse a tokenizer that maps them to other ids.

    The decoder and the calibration were fitted on the scores of particular vocabulary entries: with another
    tokenizer of the same vocabulary size, the same words would silently score other tokens.
    """
    ids = [list(t) for t in verbalizer.token_ids]
    saved = config.recorded.label_token_ids
    if record or saved is None:
        config.recorded.label_token_ids = ids
        return
    if [list(t) for t in saved] != ids:
        raise ValueError(
            f"This DecT adapter was fitted with label-word token ids {saved} for {config.label_words}, but this "
            f"tokenizer gives {ids}: it is not the tokenizer of the adapter's base model "
            f"({config.base_model_name_or_path or 'see its card'}). Pass that model's tokenizer."
        )


def check_saved_shapes(config, folder: str) -> None:
    """Refuse a saved adapter whose config sizes (decoder_dim, recorded hidden size, number of classes) differ from
    its tensors' shapes, read from the safetensors header: before the layer is built, so an edited config cannot
    make loading allocate gigabytes (a Hub adapter's weights are downloaded first, safetensors only)."""
    if not os.path.isfile(os.path.join(folder, WEIGHTS_FILE)):
        return
    dim, hidden, classes = config.decoder_dim, config.recorded.hidden_size, len(config.label_words)
    expected = {
        "dect_W": (dim, hidden),
        "dect_radii": (classes,),
        "dect_prototypes": (classes, dim),
        "dect_content_free": (classes,),
    }
    check_tensor_shapes(folder, expected)
