"""Exact scores of label words of several tokens under a causal LM: one batched pass over every word's continuation.

After the prompt's pass (which keeps its key/value cache), the words' prefix tree is fed at once: one sequence per
input of `T` steps, one per distinct proper prefix of a word (words that start alike share their steps, so `T` is
at most the number of label tokens minus the number of words), with an attention mask in which a step sees the
prompt and its own prefix only, and positions that continue the prompt. The extra cost grows with the number of
label tokens, not with one model pass per class.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch

from .prompting.verbalizer import WordPlan


# vocabulary logits computed at once in the continuation pass (rows x steps x vocabulary); the head runs in chunks
HEAD_CHUNK = 2**25


def cache_of(out):
    """The key/value cache a forward pass returned (`cache` in recent transformers, `past_key_values` before)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def cache_keyword(run) -> str:
    """The name under which `run`'s forward takes a key/value cache (`cache` in recent transformers)."""
    forward = getattr(run, "get_base_model", lambda: run)().forward
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def continuation_mask(prompt_mask: torch.Tensor, plan: WordPlan, dtype: torch.dtype) -> torch.Tensor:
    """Additive attention mask (N, 1, T, L + T): a continuation step sees the prompt's real tokens and the steps of
    its own prefix (0 where it may attend, the dtype's minimum elsewhere)."""
    steps = plan.cont_input.numel()
    allowed = torch.cat(
        (
            prompt_mask.bool()[:, None, :].expand(-1, steps, -1),
            plan.cont_allowed[None].expand(prompt_mask.shape[0], -1, -1),
        ),
        dim=-1,
    )
    mask = torch.zeros(allowed.shape, dtype=dtype, device=prompt_mask.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


def continuation_log_probs(
    run: Callable[..., torch.Tensor],
    head: Callable[[torch.Tensor], torch.Tensor] | None,
    prompt_out,
    prompt_mask: torch.Tensor,
    positions: torch.Tensor,
    plan: WordPlan,
    dtype: torch.dtype,
    vocab_size: int,
) -> torch.Tensor:
    """Log-probabilities (N, S) of the plan's continuation targets (`step_target` at `step_node`), reusing the
    key/value cache of the prompt's pass `prompt_out`.

    `run(input_ids=, attention_mask=, position_ids=, past_key_values=)` is the model (its body when `head` is
    given, which then maps hidden states to vocabulary logits in chunks); `positions` (N,) are the prediction
    positions, after which every word continues.
    """
    past = cache_of(prompt_out)
    if past is None:
        raise RuntimeError(
            "The model returned no key/value cache, which exact scoring of label words of several tokens needs "
            "(gradient checkpointing turns it off); set multi_token='first', or turn gradient checkpointing off."
        )
    n, device = prompt_mask.shape[0], prompt_mask.device
    input_ids = plan.cont_input.to(device)[None].expand(n, -1)
    position_ids = positions[:, None] + 1 + plan.cont_offset.to(device)[None]
    mask = continuation_mask(prompt_mask, plan.to(device), dtype)
    out = run(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, **{cache_keyword(run): past})
    states = out[0] if head is not None else out.logits
    node, target = plan.step_node.to(device), plan.step_target.to(device)
    steps = max(1, HEAD_CHUNK // max(1, n * vocab_size))
    parts = []
    for start in range(0, states.shape[1], steps):  # the steps are sorted by node: each chunk is contiguous
        chunk = states[:, start : start + steps]
        log_probs = torch.log_softmax((head(chunk) if head is not None else chunk).float(), dim=-1)
        here = (node >= start) & (node < start + steps)
        parts.append(log_probs[:, node[here] - start, target[here]])
    return torch.cat(parts, dim=1)
