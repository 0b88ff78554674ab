"""LM-BFF's automatic prompt search (Gao et al., 2021): label words and templates chosen on the few-shot data.

- `search_label_words`: for each class the `k_likely` vocabulary words the model finds most likely at the
  prediction position over that class's training examples; every assignment of one candidate per class is scored
  by its zero-shot accuracy on the training set, and the best `n_pairs` are re-ranked by zero-shot accuracy (or
  another metric) on the dev set, as LM-BFF's ``tools/generate_labels.py`` + ``src/label_search.py`` do (LM-BFF
  re-ranks by the dev score after prompt-based fine-tuning; here by the zero-shot dev score, which needs no
  training and suits every method).
- `generate_templates`: T5 span infilling proposes templates around the input and label word (LM-BFF's
  ``tools/generate_template.py``); `rank_templates` ranks any candidate templates by zero-shot dev score with the
  actual backbone, which also serves models other than T5.

Every function reuses `Backbone`: one model pass per example, cached; the vocabulary scores are recomputed from the
cached hidden states by the LM head, so scoring thousands of candidate words costs no extra model pass.

One argument convention for all of them: what runs first (a `Backbone`, or `model, tokenizer` where the function
builds its own prompts), then the data (`train_dataset`, then `dev_dataset`: a `datasets.Dataset` or a dict of
columns; the scoring functions also take texts or (text_a, text_b) pairs), then what names the classes (`classes`
or `label_words`), then the candidates; options are keyword-only, shared ones in one order: `metric`, `cache`,
`max_length`, `show_progress`, then the function's own. The older positional forms of `vocab_log_probs`,
`label_word_scores` and `rank_templates` are still accepted (with a DeprecationWarning for the latter two).
"""

from __future__ import annotations

import itertools
import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..backbone import Backbone
from ..data import read_labels, read_texts
from ..prompting import Template, Verbalizer, label_log_probs
from ..prompting.verbalizer import word_token_ids


logger = logging.getLogger(__name__)

Metric = Callable[[Sequence[int], Sequence[int]], float]  # (predictions, references) -> score, higher is better


def accuracy(predictions: Sequence[int], references: Sequence[int]) -> float:
    """Share of predictions equal to their reference."""
    if not len(references):
        raise ValueError("Cannot score an empty dev set.")
    return sum(int(p) == int(r) for p, r in zip(predictions, references)) / len(references)


def _texts_labels(
    backbone: Backbone, data, classes: Sequence[str]
) -> tuple[list[str], list[str] | None, torch.Tensor]:
    texts_a, texts_b = read_texts(data, needs_pair=backbone.template.is_pair)
    labels = read_labels(data, list(classes))
    if len(texts_a) != labels.numel():
        raise ValueError(f"The data has {len(texts_a)} texts but {labels.numel()} labels.")
    return texts_a, texts_b, labels


def _texts(backbone: Backbone, data, texts_b: Sequence[str] | None = None) -> tuple[list[str], list[str] | None]:
    """The texts of `data` (texts, pairs, a dict of columns or a Dataset) for the backbone's template; with `texts_b`
    (the older form) `data` holds the first texts."""
    if texts_b is not None:
        return list(data), list(texts_b)
    return read_texts(data, needs_pair=backbone.template.is_pair)


def _deprecated_form(name: str, new: str) -> None:
    message = f"This argument order of {name} is deprecated; call {name}({new})."
    warnings.warn(message, DeprecationWarning, stacklevel=3)


def vocab_log_probs(backbone: Backbone, data, texts_b: Sequence[str] | None = None) -> torch.Tensor:
    """Log-probabilities (N, V) of the whole vocabulary at each prompt's prediction position.

    `data` is texts, (text_a, text_b) pairs, a dict of columns or a Dataset (the older form `(backbone, texts_a,
    texts_b)` is accepted too). With a separable LM head the hidden states come from the backbone's feature cache
    (one pass per prompt, ever) and only the head runs; otherwise the model runs once more on the prompts. With
    demonstrations the head sees the hidden state averaged over the demonstration sets.
    """
    texts_a, texts_b = _texts(backbone, data, texts_b)
    split = backbone.head_split
    device = backbone.device
    if split is not None:
        hidden = backbone.extract(texts_a, texts_b, desc="label search").hidden
        with torch.no_grad():
            logits = torch.cat([split[1](h.to(device)).float().cpu() for h in hidden.split(64)])
        return torch.log_softmax(logits, -1)
    ids = backbone.tokenize(texts_a, texts_b)
    rows = []
    with torch.no_grad():
        for start in range(0, len(ids), backbone.batch_size):
            batch = {k: v.to(device) for k, v in backbone.collate(ids[start : start + backbone.batch_size]).items()}
            pos = backbone.positions(batch["input_ids"], batch["attention_mask"])
            logits = backbone.model(**batch).logits
            rows.append(logits[torch.arange(len(pos)), pos].float().cpu())
    return torch.log_softmax(torch.cat(rows), -1)


def label_word_scores(
    backbone: Backbone, data, label_words: dict[str, list[str]], *older_form: Any, aggregation: str = "mean"
) -> torch.Tensor:
    """Zero-shot class log-probabilities (N, C) of other label words for `data` (texts, pairs, a dict of columns or
    a Dataset), from the backbone's cached features.

    The older form `(backbone, texts_a, texts_b, label_words[, aggregation])` is still accepted.
    """
    texts_b = None
    if older_form:  # (texts_a, texts_b, label_words[, aggregation]): the second and third are shifted by one
        if len(older_form) > 2:
            raise TypeError(f"label_word_scores takes at most 5 positional arguments, got {3 + len(older_form)}.")
        _deprecated_form("label_word_scores", "backbone, data, label_words, *, aggregation=...")
        texts_b, label_words, aggregation = label_words, older_form[0], (*older_form[1:], aggregation)[0]
    texts_a, texts_b = _texts(backbone, data, texts_b)
    # scored from the cached vocabulary log-probabilities at the prediction position: first tokens only
    verbalizer = Verbalizer.from_words(
        label_words,
        backbone.tokenizer,
        space_before=backbone.template.space_before_mask,
        aggregation=aggregation,
        multi_token="first",
    )
    ids, mask = verbalizer.id_matrix()
    return label_log_probs(vocab_log_probs(backbone, texts_a, texts_b), ids, mask, aggregation)


def candidate_words(tokenizer, scores: torch.Tensor, k: int, space_before: bool) -> list[tuple[int, str]]:
    """The `k` best-scoring vocabulary tokens that are whole alphabetic words, as (token id, word).

    A token qualifies when its text is alphabetic and the verbalizer's rule maps the word back to exactly this
    token (so 'Ġgreat' qualifies after a space, a word-piece like '##ing' or 'great' without its space does not).
    """
    special = set(tokenizer.all_special_ids)
    out: list[tuple[int, str]] = []
    for tid in torch.argsort(scores, descending=True).tolist():
        if tid in special:
            continue
        word = tokenizer.decode([tid]).strip()
        if not word.isalpha() or word_token_ids(tokenizer, word, space_before) != [tid]:
            continue
        out.append((tid, word))
        if len(out) == k:
            break
    return out


@dataclass
class LabelWordSearch:
    """Result of `search_label_words`: the best assignment first, with its scores."""

    label_words: dict[str, list[str]]
    candidates: list[dict] = field(default_factory=list)  # {"label_words", "train_accuracy", "dev_score"} ranked
    per_class: dict[str, list[str]] = field(default_factory=dict)  # the k_likely candidate words of each class


MAX_ASSIGNMENTS = 5_000_000  # label-word assignments enumerated at most; beyond, one class at a time


def coordinate_ascent(train_lp: torch.Tensor, labels: torch.Tensor, candidates: list[list[int]], rounds: int = 2):
    """Assignments of distinct tokens visited by coordinate ascent: from each class's likeliest candidate, each
    class in turn takes the candidate that maximises training accuracy with the others fixed, for `rounds` passes.
    Costs rounds x C x k accuracy evaluations instead of k ** C."""
    current: list[int] = []
    for options in candidates:  # the likeliest candidate not taken by an earlier class
        current.append(next((t for t in options if t not in current), options[0]))
    visited = {tuple(current)}
    for _ in range(rounds):
        for c, options in enumerate(candidates):
            trials = [current[:c] + [t] + current[c + 1 :] for t in options if t == current[c] or t not in current]
            idx = torch.tensor(trials)
            acc = (train_lp[:, idx].argmax(-1) == labels.unsqueeze(1)).float().mean(0)
            current = trials[int(acc.argmax())]
            visited.update(tuple(t) for t in trials if len(set(t)) == len(t))
    return sorted(visited)


def search_label_words(
    backbone: Backbone,
    train_dataset,
    dev_dataset,
    classes: Sequence[str],
    *,
    metric: Metric = accuracy,
    k_likely: int = 30,
    n_pairs: int = 32,
) -> LabelWordSearch:
    """LM-BFF's automatic label words (see the module docstring); returns label words usable by every method.

    `train_dataset` and `dev_dataset` are datasets or dicts of columns (text column(s) and labels naming
    `classes`). `k_likely` candidates per class give k_likely ** C assignments, all scored on the training set
    (vectorised, no model pass) up to `MAX_ASSIGNMENTS`; beyond (tens of classes) the assignments that
    `coordinate_ascent` visits are scored instead. The `n_pairs` best are re-ranked by `metric` on the dev set.
    """
    classes = list(classes)
    if k_likely < 1 or n_pairs < 1:
        raise ValueError(f"k_likely and n_pairs must be >= 1, got {k_likely} and {n_pairs}.")
    ta, tb, ty = _texts_labels(backbone, train_dataset, classes)
    da, db, dy = _texts_labels(backbone, dev_dataset, classes)
    missing = [c for i, c in enumerate(classes) if not bool((ty == i).any())]
    if missing:
        raise ValueError(f"Label word search needs training examples of every class; none for {missing}.")
    train_lp = vocab_log_probs(backbone, ta, tb)
    dev_lp = vocab_log_probs(backbone, da, db)
    space = backbone.template.space_before_mask
    per_class = []
    for c in range(len(classes)):
        per_class.append(candidate_words(backbone.tokenizer, train_lp[ty == c].mean(0), k_likely, space))
    if any(not words for words in per_class):
        raise ValueError("No whole-word vocabulary token qualified as a label word candidate.")
    mean_lp = train_lp.mean(0)

    # every assignment (distinct tokens) scored on the training set, in chunks
    if k_likely ** len(classes) <= MAX_ASSIGNMENTS:
        pairings = [p for p in itertools.product(*[[t for t, _ in ws] for ws in per_class]) if len(set(p)) == len(p)]
    else:  # many classes: k ** C assignments cannot be enumerated
        logger.warning(
            "Label word search: %d classes x %d candidates give %d**%d assignments, more than %d: searching one "
            "class at a time instead (coordinate ascent on training accuracy).",
            len(classes), k_likely, k_likely, len(classes), MAX_ASSIGNMENTS,
        )  # fmt: skip
        pairings = coordinate_ascent(train_lp, ty, [[t for t, _ in ws] for ws in per_class])
    if not pairings:
        raise ValueError("The candidate words of all classes coincide; raise k_likely.")
    scored: list[tuple[float, float, tuple[int, ...]]] = []
    for start in range(0, len(pairings), 4096):
        idx = torch.tensor(pairings[start : start + 4096])  # (P, C)
        preds = train_lp[:, idx].argmax(-1)  # (N, P)
        acc = (preds == ty.unsqueeze(1)).float().mean(0)
        prior = mean_lp[idx].sum(-1)  # tie-break: words the model finds likely overall
        scored += [(float(a), float(p), tuple(row)) for a, p, row in zip(acc, prior, idx.tolist())]
    scored.sort(key=lambda s: (-s[0], -s[1]))
    words_of = {t: w for ws in per_class for t, w in ws}
    candidates = []
    for acc, _, pairing in scored[:n_pairs]:
        preds = dev_lp[:, list(pairing)].argmax(-1).tolist()
        candidates.append(
            {
                "label_words": {cls: [words_of[t]] for cls, t in zip(classes, pairing)},
                "train_accuracy": acc,
                "dev_score": metric(preds, dy.tolist()),
            }
        )
    candidates.sort(key=lambda c: -c["dev_score"])  # stable: equal dev scores keep the training order
    best = candidates[0]
    logger.info(
        "Label word search: %s (dev %.3f, train %.3f) among %d assignments.",
        best["label_words"],
        best["dev_score"],
        best["train_accuracy"],
        len(pairings),
    )
    return LabelWordSearch(
        label_words=best["label_words"],
        candidates=candidates,
        per_class={cls: [w for _, w in ws] for cls, ws in zip(classes, per_class)},
    )


# ---------------------------------------------------------------------------------------------- templates
@dataclass
class TemplateSearch:
    """Result of a template search: the best template string first, with the scores of all candidates."""

    template: str
    candidates: list[dict] = field(default_factory=list)  # {"template", "dev_score"} ranked


def _is_templates(value) -> bool:
    """Whether `value` is a list of template strings (never a dataset: a dev set needs labels)."""
    if isinstance(value, (str, Mapping)) or hasattr(value, "column_names") or not isinstance(value, Sequence):
        return False
    return all(isinstance(t, str) for t in value)


def rank_templates(
    model,
    tokenizer,
    dev_dataset,
    label_words: dict[str, list[str]],
    templates: Sequence[str],
    *,
    metric: Metric = accuracy,
    cache=None,
    max_length: int | None = None,
    show_progress: bool = False,
) -> TemplateSearch:
    """Rank candidate templates (peft-dect syntax) by the zero-shot dev score of their label words on `model`.

    Model-agnostic: works for any masked or causal LM the `Backbone` supports. Templates that do not suit the model
    (e.g. text after the mask for a causal LM) are skipped with a warning. The older order `(model, tokenizer,
    templates, label_words, dev_dataset)` is still accepted.
    """
    if _is_templates(dev_dataset) and not _is_templates(templates):  # the older order: templates third, data last
        _deprecated_form("rank_templates", "model, tokenizer, dev_dataset, label_words, templates")
        dev_dataset, templates = templates, dev_dataset
    if not templates:
        raise ValueError("rank_templates needs at least one candidate template.")
    classes = list(label_words)
    ranked = []
    for text in templates:
        template = Template(text)
        try:
            verbalizer = Verbalizer.from_words(label_words, tokenizer, space_before=template.space_before_mask)
            bb = Backbone(
                model, tokenizer, template, verbalizer, max_length=max_length, cache=cache, show_progress=show_progress
            )
        except ValueError as err:
            logger.warning("Skipping template %r: %s", text, err)
            continue
        da, db, dy = _texts_labels(bb, dev_dataset, classes)
        preds = bb.extract(da, db, desc="template search").label_logits.argmax(-1).tolist()
        ranked.append({"template": text, "dev_score": metric(preds, dy.tolist())})
    if not ranked:
        raise ValueError("None of the candidate templates suits this model.")
    ranked.sort(key=lambda r: -r["dev_score"])
    return TemplateSearch(template=ranked[0]["template"], candidates=ranked)


# ---------------------------------------------------------------------------------------------- T5 generation
SINGLE_PATTERNS = ("{text_a} <0> {label} <1>", "<0> {label} <1> {text_a}")  # LM-BFF: mask at the end, or before
PAIR_PATTERNS = ("{text_a} <0> {label} <1> {text_b}",)  # LM-BFF: the mask between the two sentences


def _sentinel(tokenizer, i: int) -> int:
    tid = tokenizer.convert_tokens_to_ids(f"<extra_id_{i}>")
    if tid is None or tid == tokenizer.unk_token_id:
        raise ValueError(f"The T5 tokenizer has no sentinel token <extra_id_{i}>: use a T5 span-infilling tokenizer.")
    return tid


def _piece_text(tokenizer, ids: list[int]) -> str:
    """Text of generated tokens, keeping their leading spaces (SentencePiece '▁' and byte-BPE 'Ġ' mark a space)."""
    return "".join(tokenizer.convert_ids_to_tokens(ids)).replace("▁", " ").replace("Ġ", " ")


def generate_templates(
    t5_model,
    t5_tokenizer,
    train_dataset,
    label_words: dict[str, list[str]],
    *,
    pair: bool = False,
    beam: int = 20,
    max_new_tokens: int = 20,
    batch_size: int = 32,
    max_input_tokens: int = 256,
) -> list[str]:
    """Candidate templates (peft-dect syntax, best first) generated by T5 span infilling, as LM-BFF does.

    Every training example becomes a T5 input such as ``"<sentence> <extra_id_0> great <extra_id_1>"`` (its class's
    first label word where the mask goes); a beam search fills both gaps at once, each step scoring tokens by the
    decoder's logits averaged over all examples, so the templates suit the whole training set. The first pattern
    puts the mask after the sentence, the second before it (single sentences); sentence pairs get the mask between
    the sentences. Generated text between the gaps becomes literal template text around ``{mask}``.
    """
    if beam < 1 or max_new_tokens < 2:
        raise ValueError(f"beam must be >= 1 and max_new_tokens >= 2, got {beam} and {max_new_tokens}.")
    classes = list(label_words)
    texts_a, texts_b = read_texts(train_dataset, needs_pair=pair)
    labels = read_labels(train_dataset, classes)
    sentinels = [_sentinel(t5_tokenizer, i) for i in range(3)]
    eos = t5_tokenizer.eos_token_id
    device = next(t5_model.parameters()).device
    results: list[tuple[float, str]] = []
    for pattern in PAIR_PATTERNS if pair else SINGLE_PATTERNS:
        inputs = []
        for i, a in enumerate(texts_a):
            text = pattern.replace("<0>", "<extra_id_0>").replace("<1>", "<extra_id_1>")
            word = label_words[classes[int(labels[i])]][0]
            text = text.replace("{label}", word).replace("{text_a}", a).replace("{text_b}", texts_b[i] if pair else "")
            inputs.append(text)
        enc = t5_tokenizer(inputs, return_tensors="pt", padding=True, truncation=True, max_length=max_input_tokens)
        enc = {k: v.to(device) for k, v in enc.items()}
        with torch.no_grad():
            encoded = [
                t5_model.get_encoder()(
                    input_ids=enc["input_ids"][s : s + batch_size],
                    attention_mask=enc["attention_mask"][s : s + batch_size],
                ).last_hidden_state
                for s in range(0, len(inputs), batch_size)
            ]
        for score, parts in _beam_search(
            t5_model, encoded, enc["attention_mask"], sentinels, eos, beam, max_new_tokens, batch_size
        ):
            gap0, gap1 = (_piece_text(t5_tokenizer, p) for p in parts)
            gap0 = gap0.replace("{", "{{").replace("}", "}}").rstrip(" ")
            gap1 = gap1.replace("{", "{{").replace("}", "}}")
            if pattern.startswith("{text_a}"):
                tail = " {text_b}" if pair else ""
                template = "{text_a}" + gap0 + " {mask}" + gap1 + tail
            else:
                template = gap0.lstrip(" ") + (" {mask}" if gap0.strip() else "{mask}") + gap1 + " {text_a}"
            try:
                Template(template)
            except ValueError:
                continue
            results.append((score, template))
    results.sort(key=lambda r: -r[0])
    return list(dict.fromkeys(t for _, t in results))


def _beam_search(model, encoded, attention_mask, sentinels, eos, beam, max_new_tokens, batch_size):
    """Beam search over the two gaps: decoder input starts with <extra_id_0>; gap 0 ends at <extra_id_1>, gap 1 at
    <extra_id_2> or </s>. Returns [(log-likelihood, [gap0 ids, gap1 ids])] of finished hypotheses.

    Unlike LM-BFF's search, closing the current gap is always among a hypothesis's expansions (scored by the model),
    and the only one when the token budget would otherwise run out, so every surviving hypothesis finishes."""
    start = model.config.decoder_start_token_id
    n = attention_mask.shape[0]
    device = attention_mask.device
    # hypothesis: (score, decoder tokens after <extra_id_0>, gap index)
    beams: list[tuple[float, list[int], int]] = [(0.0, [], 0)]
    finished: list[tuple[float, list[list[int]]]] = []
    forbidden = set(sentinels) | {eos}
    for step in range(max_new_tokens):
        remaining = max_new_tokens - step
        expanded: list[tuple[float, list[int], int]] = []
        for score, tokens, gap in beams:
            prefix = torch.tensor([start, sentinels[0], *tokens], device=device).expand(n, -1)
            logits = []
            with torch.no_grad():
                for s, hidden in zip(range(0, n, batch_size), encoded):
                    out = model(
                        encoder_outputs=(hidden,),
                        attention_mask=attention_mask[s : s + batch_size],
                        decoder_input_ids=prefix[s : s + batch_size],
                    )
                    logits.append(out.logits[:, -1].float())
            mean = torch.cat(logits).mean(0)  # LM-BFF averages the logits over all examples
            log_probs = mean - torch.logsumexp(mean, -1)
            ends = {sentinels[1]} if gap == 0 else {sentinels[2], eos}
            top = torch.topk(log_probs, min(beam + len(forbidden), log_probs.numel())).indices.tolist()
            # closing the gap is always a candidate, and the only one when the budget needs it to finish in time
            must_close = remaining <= 2 - gap
            for tid in sorted(ends) if must_close else dict.fromkeys(top + sorted(ends)):
                if tid in ends:
                    if gap == 0:
                        expanded.append((score + float(log_probs[tid]), tokens + [tid], 1))
                    else:
                        cut = tokens.index(sentinels[1])
                        finished.append((score + float(log_probs[tid]), [tokens[:cut], tokens[cut + 1 :]]))
                elif tid not in forbidden:
                    expanded.append((score + float(log_probs[tid]), tokens + [tid], gap))
        beams = sorted(expanded, key=lambda b: -b[0])[:beam]
        if not beams:
            break
    finished.sort(key=lambda f: -f[0])
    return finished[:beam]


def search_templates(
    t5_model,
    t5_tokenizer,
    model,
    tokenizer,
    train_dataset,
    dev_dataset,
    label_words: dict[str, list[str]],
    *,
    metric: Metric = accuracy,
    cache=None,
    max_length: int | None = None,
    show_progress: bool = False,
    top: int | None = None,
    **generation: Any,
) -> TemplateSearch:
    """LM-BFF's automatic templates: T5 proposes (`generate_templates`), the actual model ranks by dev score.

    `metric`, `cache`, `max_length` and `show_progress` go to `rank_templates`; `top` limits how many generated
    templates (best T5 likelihood first) are scored on the dev set; `generation` options (`pair`, `beam`,
    `max_new_tokens`, ...) go to `generate_templates`.
    """
    candidates = generate_templates(t5_model, t5_tokenizer, train_dataset, label_words, **generation)
    if not candidates:
        raise ValueError("T5 generated no usable template; raise beam or max_new_tokens.")
    ranking = {"metric": metric, "cache": cache, "max_length": max_length, "show_progress": show_progress}
    return rank_templates(model, tokenizer, dev_dataset, label_words, candidates[:top], **ranking)
