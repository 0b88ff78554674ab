"""The model card of an in-process DecT adapter: its run record, with DecT's sentence on how it was fitted."""

from __future__ import annotations

from ..cards import RunRecord, render_card


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
    if fit.get("selected_on"):
        text += (
            f" Auto mode chose these settings on {fit['selected_on']} (held-out accuracy "
            f"{100 * fit['heldout_accuracy']:.1f})."
        )
    return text


def dect_record(config) -> RunRecord:
    """A new run record of a DecT adapter with this config."""
    return RunRecord(
        card="dect",
        tags=["dect", "prompting"],
        base_model=config.base_model_name_or_path,
        template=config.template,
        label_words=config.label_words,
    )


def dect_card(record: RunRecord | None, config, repo: str | None = None) -> str:
    """The README.md of a DecT adapter (a fresh record when it was not fitted or evaluated in this session)."""
    record = record or dect_record(config)
    record.base_model, record.template, record.label_words = (
        config.base_model_name_or_path,
        config.template,
        config.label_words,
    )
    record.training = fit_sentence(record.fit, config)
    if config.soft_prompt:
        record.training += (
            f" The features are read with a soft prompt prepended (a PEFT prompt-tuning adapter, saved in "
            f"`{config.soft_prompt}/` and loaded with this adapter): DecT on a prompt-tuned model."
        )
    return render_card(record, repo=repo, decoder_dim=config.decoder_dim)
