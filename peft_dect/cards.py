"""Model cards of peft-dect adapters, rendered from the templates in `model_cards/`.

A card carries Hub metadata (base model, `library_name: peft`, tags, and a `model-index` once the adapter has been
evaluated), the prompt and label words, the training data size and fit settings, and how to load the adapter.
"""

from __future__ import annotations

import importlib.resources
import string
from typing import Any

import yaml


MARKER = "<!-- peft-dect card -->"


def _template(name: str) -> string.Template:
    return string.Template(importlib.resources.files("peft_dect.model_cards").joinpath(f"{name}.md").read_text())


def _label_word_rows(label_words: dict) -> str:
    """The markdown rows of a card's label-word table: one class and its words per row."""
    return "\n".join(f"| {cls} | {', '.join(words)} |" for cls, words in label_words.items())


def _model_index(name: str, evaluations: list[dict]) -> list[dict]:
    results = []
    for ev in evaluations:
        results.append(
            {
                "task": {"type": "text-classification", "name": "Text Classification"},
                "dataset": {
                    "name": ev.get("dataset", "evaluation data"),
                    "type": ev.get("dataset", "custom"),
                    "split": ev.get("split", "test"),
                },
                "metrics": [{"type": k, "value": round(float(v), 4)} for k, v in ev["metrics"].items()],
            }
        )
    return [{"name": name, "results": results}] if results else []


def _evaluation_text(evaluations: list[dict]) -> str:
    if not evaluations:
        return "Not evaluated yet: run `model.evaluate(dataset)` before saving to record metrics here."
    return "\n".join(
        f"- {ev.get('dataset', 'evaluation data')} ({ev.get('split', 'test')}, {ev.get('examples', '?')} "
        f"examples): " + ", ".join(f"{k} {100 * float(v):.1f}" for k, v in ev["metrics"].items())
        for ev in evaluations
    )


INIT_TEXT = {
    "class_label": "class-label init (Lester et al.): the first tokens are the embeddings of the label words (one "
    "token per word, sub-tokens averaged), the rest embeddings of tokens sampled from the 5000 most common",
    "sample_vocab": "sampled vocabulary: embeddings of tokens sampled from the 5000 most common",
    "random": "random: uniform noise on the scale of the model's token embeddings",
}


def render_prompt_tuning_card(
    config,
    *,
    template: str,
    label_words: dict,
    init: dict | None = None,
    training: str | None = None,
    evaluations: list[dict] | None = None,
    repo: str | None = None,
) -> str:
    """The README.md of a prompt-tuning label-word classifier: method, initialisation, prompt, metrics."""
    import peft
    import transformers

    from . import __version__

    evaluations = evaluations or []
    base = config.base_model_name_or_path or "unknown"
    name = repo or f"prompt-tuning-{base.rstrip('/').split('/')[-1]}"
    metadata: dict[str, Any] = {"library_name": "peft"}
    if config.base_model_name_or_path:
        metadata["base_model"] = config.base_model_name_or_path
    metadata["pipeline_tag"] = "text-classification"
    metadata["tags"] = ["peft-dect", "prompt-tuning", "few-shot", "text-classification", "prompting"]
    index = _model_index(name, evaluations)
    if index:
        metadata["model-index"] = index
    if init and init.get("init") in INIT_TEXT:
        init_text = f"{INIT_TEXT[init['init']]} (seed {init.get('seed', 0)})"
    else:
        init_text = f"PEFT's `{getattr(config.prompt_tuning_init, 'value', config.prompt_tuning_init)}`"
    rows = _label_word_rows(label_words)
    return _template("prompt_tuning").substitute(
        metadata=yaml.safe_dump(metadata, sort_keys=False).strip(),
        title=name,
        base_model=base,
        prompt_tokens=config.num_virtual_tokens,
        token_dim=config.token_dim,
        task_type=getattr(config.task_type, "value", config.task_type),
        init=init_text,
        template=template,
        label_word_rows=rows,
        training=training or "Not recorded: train with `transformers.Trainer` on `classifier.prepare_dataset(...)`.",
        evaluation=_evaluation_text(evaluations),
        repo=repo or "path/to/adapter",
        peft_dect_version=__version__,
        peft_version=peft.__version__,
        transformers_version=transformers.__version__,
    )


def render_dect_card(config, *, fit: dict | None, evaluations: list[dict], repo: str | None = None) -> str:
    """The README.md of a DecT adapter."""
    import peft
    import transformers

    from . import __version__

    base = config.base_model_name_or_path or "unknown"
    name = repo or f"dect-{base.rstrip('/').split('/')[-1]}"
    metadata: dict[str, Any] = {"library_name": "peft"}
    if config.base_model_name_or_path:  # models built from a config have no name to point to
        metadata["base_model"] = config.base_model_name_or_path
    metadata["pipeline_tag"] = "text-classification"
    metadata["tags"] = ["peft-dect", "dect", "few-shot", "text-classification", "prompting"]
    index = _model_index(name, evaluations)
    if index:
        metadata["model-index"] = index
    rows = _label_word_rows(config.label_words)
    if fit:
        training = (
            f"Fitted on {fit['train_examples']} labelled examples ({fit['shots']} per class) with "
            f"{fit['model_passes']} model passes; mode `{fit['mode']}`, fusion weight lam = {fit['lam']:g}, "
            f"calibration {'on' if fit['calibrate'] else 'off'}, {fit['epochs']} epochs of Adam (lr "
            f"{config.learning_rate:g}), decoder seed {config.seed}."
        )
        if fit.get("selected_on"):
            training += (
                f" Auto mode chose these settings on {fit['selected_on']} (held-out accuracy "
                f"{100 * fit['heldout_accuracy']:.1f})."
            )
    else:
        training = "Not fitted in this session: the adapter predicts with its saved decoder, or zero-shot if none."
    if getattr(config, "soft_prompt", None):
        training += (
            f" The features are read with a soft prompt prepended (a PEFT prompt-tuning adapter, saved in "
            f"`{config.soft_prompt}/` and loaded with this adapter): DecT on a prompt-tuned model."
        )
    evaluation = _evaluation_text(evaluations)
    return _template("dect").substitute(
        metadata=yaml.safe_dump(metadata, sort_keys=False).strip(),
        title=name,
        base_model=base,
        decoder_dim=config.decoder_dim,
        template=config.template,
        label_word_rows=rows,
        training=training,
        evaluation=evaluation,
        repo=repo or "path/to/adapter",
        peft_dect_version=__version__,
        peft_version=peft.__version__,
        transformers_version=transformers.__version__,
    )


def render_lmbff_card(
    config, *, base_model: str | None, training: dict | None, evaluations: list[dict], repo: str | None = None
) -> str:
    """The README.md of an LM-BFF prompt-based fine-tuning classifier (a LoRA adapter or a full model)."""
    import peft
    import transformers

    from . import __version__

    base = base_model or "unknown"
    name = repo or f"lmbff-{base.rstrip('/').split('/')[-1]}"
    metadata: dict[str, Any] = {"library_name": "peft" if config.tuning == "peft" else "transformers"}
    if base_model:
        metadata["base_model"] = base_model
    metadata["pipeline_tag"] = "text-classification"
    metadata["tags"] = ["peft-dect", "lm-bff", "prompt-based-fine-tuning", "few-shot", "text-classification"]
    kind = (
        str(getattr(config.peft_config.peft_type, "value", config.peft_config.peft_type)) if config.peft_config else ""
    )
    if kind:
        metadata["tags"].append(kind.lower())
    index = _model_index(name, evaluations)
    if index:
        metadata["model-index"] = index
    if config.tuning == "peft":
        tuning = f"only a {kind} adapter was trained (this repository holds the adapter, the base model is frozen)."
        load = 'model = LMBFFModel.from_pretrained("$repo", base_model=base_model, tokenizer=tokenizer)'
    else:
        tuning = "every parameter of the model was fine-tuned, as in the paper (this repository holds the model)."
        load = 'model = LMBFFModel.from_pretrained("$repo")'
    rows = _label_word_rows(config.label_words)
    if config.is_regression:
        lb, ub = config.regression_bounds
        task = (
            f"Regression: the prediction is `{lb:g} + {ub - lb:g} * p({config.classes[1]})`, interpolating between "
            "the two label words."
        )
    else:
        task = "Classification: the class is the one whose label words are most likely at the prediction position."
    if config.demonstrations is not None:
        task += f" Every input carries demonstrations from the training set ({config.demonstrations})."
    if training:
        training_text = (
            "Trained with the transformers Trainer: " + ", ".join(f"{k} {v}" for k, v in training.items()) + "."
        )
    else:
        training_text = "Not trained in this session."
    if evaluations:
        evaluation = "\n".join(
            f"- {ev.get('dataset', 'evaluation data')} ({ev.get('split', 'test')}, {ev.get('examples', '?')} "
            f"examples): " + ", ".join(f"{k} {float(v):.4f}" for k, v in ev["metrics"].items())
            for ev in evaluations
        )
    else:
        evaluation = "Not evaluated yet: run `model.evaluate(dataset, name=..., split=...)` before saving."
    return _template("lmbff").substitute(
        metadata=yaml.safe_dump(metadata, sort_keys=False).strip(),
        title=name,
        base_model=base,
        tuning_sentence=tuning,
        template=config.template,
        label_word_rows=rows,
        task_sentence=task,
        training=training_text,
        evaluation=evaluation,
        load_line=string.Template(load).safe_substitute(repo=repo or "path/to/model"),
        peft_dect_version=__version__,
        peft_version=peft.__version__,
        transformers_version=transformers.__version__,
    )


def render_remote_dect_card(
    config, model_name: str, *, fit: dict | None, evaluations: list[dict], repo: str | None = None
) -> str:
    """The README.md of a black-box DecT adapter (fitted through a served model, see `peft_dect.remote`)."""
    from . import __version__

    name = repo or f"dect-remote-{model_name.rstrip('/').split('/')[-1]}"
    metadata: dict[str, Any] = {"library_name": "peft-dect", "pipeline_tag": "text-classification"}
    metadata["tags"] = ["peft-dect", "dect", "black-box", "few-shot", "text-classification", "prompting"]
    index = _model_index(name, evaluations)
    if index:
        metadata["model-index"] = index
    rows = _label_word_rows(config.label_words)
    with_decoder = bool(fit) and fit.get("mode") != "logits"
    decoder_text = (
        f"a small decoder (a {config.decoder_dim}-dimensional projection, fixed class prototypes and learned radii) "
        "reads the prompt's embedding and is fused with them."
        if with_decoder
        else "the server gave no embeddings, so the adapter classifies with DecT's logit term alone."
    )
    if fit:
        training = (
            f"Fitted on {fit['train_examples']} labelled examples ({fit['shots']} per class) with "
            f"{fit['requests']} HTTP requests ({fit['completion_requests']} for log-probabilities, "
            f"{fit['embedding_requests']} for embeddings) in {fit['wall_seconds']:.1f} s; mode `{fit['mode']}`, "
            f"fusion weight lam = {fit['lam']:g}, calibration {'on' if fit['calibrate'] else 'off'}."
        )
    else:
        training = "Not fitted: the adapter predicts with calibrated label-word scores."
    return _template("dect_remote").substitute(
        metadata=yaml.safe_dump(metadata, sort_keys=False).strip(),
        title=name,
        base_model=model_name,
        decoder_text=decoder_text,
        calibration_text=(
            "calibrated against a content-free prompt" if not fit or fit.get("calibrate") else "not calibrated"
        ),
        template=config.template,
        label_word_rows=rows,
        training=training,
        evaluation=_evaluation_text(evaluations),
        repo=repo or "path/to/adapter",
        peft_dect_version=__version__,
    )
