"""The model card of an in-process DecT adapter: its run record, with DecT's sentence on how it was fitted."""

from __future__ import annotations

from ..cards import RunRecord, render_card
from ..uncertainty import Calibration


def fit_sentence(fit: dict, config) -> str:
    """How the adapter was fitted, in a sentence or two, from its fit report."""
    if not fit:
        return "Not fitted in this session: the adapter predicts with its saved decoder, or zero-shot."
    text = (
        f"Fitted on {fit['train_examples']} labelled examples ({fit['shots']} per class) with "
        f"{fit['model_passes']} model passes; mode `{fit['mode']}`, fusion weight lam = {fit['lam']:g}, "
        f"calibration {'on' if fit['calibrate'] else 'off'}, {fit['epochs']} epochs of Adam (lr "
        f"{config.learning_rate:g}), decoder seed {config.seed}."
    )
    if fit.get("score_scale", 1.0) != 1.0:
        text += (
            f" The decoder's term was trained at scale {fit['score_scale']:g} (many classes); lam is given in the "
            "stored, unscaled form."
        )
    text += prompt_sentence(fit)
    if fit.get("multi_label") and fit.get("selected_on"):
        text += (
            f" Multi-label: one sigmoid per class; auto mode chose these settings on {fit['selected_on']} (held-out "
            f"micro-F1 {100 * fit['heldout_micro_f1']:.1f})."
        )
    elif fit.get("selected_on"):
        text += (
            f" Auto mode chose these settings on {fit['selected_on']} (held-out accuracy "
            f"{100 * fit['heldout_accuracy']:.1f})."
        )
    return text


def prompt_sentence(fit: dict) -> str:
    """Which prompt the fit chose and what it costs per input at prediction time; "" for a report without it."""
    if "predict_passes_per_input" not in fit:
        return ""
    passes = fit["predict_passes_per_input"]
    cost = (
        f"{passes} model pass{'es' if passes > 1 else ''} per input at prediction time (mean "
        f"{fit['prompt_tokens_per_input']:.0f} prompt tokens over the training inputs)"
    )
    candidates = fit.get("prompt_candidates")
    if not candidates:
        return f" Prompt: {fit['prompt']}, {cost}."
    scores = ", ".join(f"{name} {100 * score:.1f}" for name, score in candidates.items())
    return f" Prompt chosen on held-out data ({scores}): {fit['prompt']}, {cost}."


def uncertainty_sentence(config) -> str:
    """What the adapter knows of its own uncertainty (its saved calibration), in a sentence; "" without one."""
    if config.uncertainty is None:
        return ""
    cal = Calibration.from_dict(config.uncertainty)
    if config.multi_label:
        if config.thresholds is None:
            return ""
        low, high = min(config.thresholds), max(config.thresholds)
        return (
            f" Each class is predicted when its probability, sigmoid(score / {cal.temperature:.3g}), reaches its "
            f"threshold ({low:.2f} to {high:.2f}), chosen with the temperature on {cal.heldout} held-out rows "
            f"({cal.sources})."
        )
    if not cal.has_heldout:
        return ""
    text = (
        f" Probabilities are calibrated by a temperature of {cal.temperature:.3g} fitted on {cal.heldout} held-out "
        f"predictions ({cal.sources or 'calibrate()'}; expected calibration error {100 * cal.ece_before:.1f} -> "
        f"{100 * cal.ece_after:.1f} there); the same rows give conformal prediction sets (`predict_set`) and the "
        f"rejection threshold of `predict(reject=True)` ({cal.unknown_score} score, at most "
        f"{100 * config.reject_rate:g}% of in-scope inputs rejected"
    )
    if cal.oos_unknown_scores:
        text += f"; threshold set with {len(cal.oos_unknown_scores)} out-of-scope examples"
    label = "None" if config.reject_label is None else f"`{config.reject_label}`"
    return text + f"; rejected inputs are answered {label})."


def templates_shown(config) -> str:
    """The card's template: the one the adapter prompts with, or every template its features are averaged over
    (the card writes it between backticks, so several read `a`, `b`)."""
    return "`, `".join(config.prompt_templates)


def dect_record(config) -> RunRecord:
    """A new run record of a DecT adapter with this config."""
    return RunRecord(
        card="dect",
        tags=["dect", "prompting"],
        base_model=config.base_model_name_or_path,
        template=templates_shown(config),
        label_words=config.label_words,
    )


def dect_card(record: RunRecord | None, config, repo: str | None = None) -> str:
    """The README.md of a DecT adapter (a fresh record when it was not fitted or evaluated in this session)."""
    record = record or dect_record(config)
    record.base_model, record.template, record.label_words = (
        config.base_model_name_or_path,
        templates_shown(config),
        config.label_words,
    )
    record.training = fit_sentence(record.fit, config) + uncertainty_sentence(config)
    if config.soft_prompt:
        record.training += (
            f" The features are read with a soft prompt prepended (a PEFT prompt-tuning adapter, saved in "
            f"`{config.soft_prompt}/` and loaded with this adapter): DecT on a prompt-tuned model."
        )
    return render_card(record, repo=repo, decoder_dim=config.decoder_dim)
