"""The model card of a black-box DecT adapter: its run record, with what the fit cost in HTTP requests."""

from __future__ import annotations

from ..cards import RunRecord, render_card
from ..dect.card import uncertainty_sentence


def remote_card(record: RunRecord, config) -> str:
    """The README.md of a black-box adapter fitted through a served model."""
    fit = record.fit
    with_decoder = bool(fit) and fit.get("mode") != "logits"
    if fit:
        record.training = (
            f"Fitted on {fit['train_examples']} labelled examples ({fit['shots']} per class) with "
            f"{fit['requests']} HTTP requests ({fit['completion_requests']} for log-probabilities, "
            f"{fit['embedding_requests']} for embeddings) in {fit['wall_seconds']:.1f} s; mode `{fit['mode']}`, "
            f"fusion weight lam = {fit['lam']:g}, calibration {'on' if fit['calibrate'] else 'off'}."
        )
    else:
        record.training = "Not fitted: the adapter predicts with calibrated label-word scores."
    record.training += uncertainty_sentence(config)
    decoder_text = (
        f"a small decoder (a {config.decoder_dim}-dimensional projection, fixed class prototypes and learned radii) "
        "reads the prompt's embedding and is fused with them."
        if with_decoder
        else "the server gave no embeddings, so the adapter classifies with DecT's logit term alone."
    )
    calibrated = not fit or fit.get("calibrate")
    calibration = "calibrated against a content-free prompt" if calibrated else "not calibrated"
    return render_card(record, decoder_text=decoder_text, calibration_text=calibration)
