"""Black-box DecT: fit and predict with a model that peft-dect reaches only over HTTP.

The decoder, its fitting and its scores are the DecT core's (`peft_dect.dect.core`); only the features come from the
server: label-word log-probabilities from the top next-token candidates, hidden states from the prompt's embedding.
A server without embeddings gives DecT its logit term alone: calibrated zero-shot scores.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..cards import RunRecord
from ..classifier import FewShotClassifier
from ..dect import DecTConfig, DecTCore, DecTState
from ..dect.core import ConfigUncertainty
from ..saving import WEIGHTS_FILE, staged_folder
from .card import remote_card
from .client import OpenAIEndpoint
from .features import RemoteBackbone
from .saved import REMOTE_FILE, endpoint_arguments, read_endpoint_file, saved_run_record, write_endpoint_file


class BlackBoxDecT(ConfigUncertainty, FewShotClassifier):
    """DecT on a served model: one log-probability request and one embedding per input, then decoder fitting.

    Args:
        config: an ordinary `DecTConfig` (template, label words, mode, decoder settings); demonstrations and soft
            prompts need the model in-process and are refused.
        endpoint: an `OpenAIEndpoint`; its `stats` count every request, and `fit` reports what it cost.
        missing_label_words, label_token_ids, tokenizer: how label words outside the server's top candidates are
            scored (see `RemoteBackbone`).
    """

    def __init__(
        self,
        config: DecTConfig,
        endpoint: OpenAIEndpoint,
        *,
        missing_label_words: str = "exact",
        label_token_ids: dict[str, int] | None = None,
        tokenizer=None,
    ) -> None:
        if not isinstance(config, DecTConfig):
            raise TypeError(f"config must be a DecTConfig, got {type(config).__name__}.")
        if not isinstance(endpoint, OpenAIEndpoint):
            raise TypeError(f"endpoint must be a peft_dect.remote.OpenAIEndpoint, got {type(endpoint).__name__}.")
        if config.demonstrations or config.soft_prompt or config.chat_template or config.templates:
            raise ValueError(
                "Black-box DecT sends the template alone: demonstrations, soft prompts, template candidates "
                "(templates=...) and chat_template=True need the model in-process (use get_peft_model with a "
                "transformers model)."
            )
        if config.max_length is not None:
            raise ValueError(
                "Black-box DecT cannot truncate prompts (it has no tokenizer): leave max_length=None; the server "
                "refuses prompts longer than its context with an HTTP error that names it."
            )
        self.config = config
        self.endpoint = endpoint
        self.backbone = RemoteBackbone.for_config(
            endpoint, config, missing=missing_label_words, label_token_ids=label_token_ids, tokenizer=tokenizer
        )
        if config.base_model_name_or_path is None:
            config.base_model_name_or_path = endpoint.model
        self.state = DecTState(calibrate=config.calibrate)
        self.core = DecTCore(config, self.backbone, self.state)
        self.run_record = RunRecord(
            card="dect_remote",
            tags=["dect", "black-box", "prompting"],
            library_name="peft-dect",
            base_model=endpoint.model,
            template=config.active_template,
            label_words=config.label_words,
        )

    @property
    def classes(self) -> list[str]:
        return self.config.classes

    @property
    def dect_config(self) -> DecTConfig:
        return self.config

    @property
    def uses_hidden(self) -> bool:
        """Whether the decoder term is used (the server gives embeddings), or the logit term alone."""
        return self.endpoint.embeddings

    def read_targets(self, data) -> torch.Tensor:
        return self.config.read_labels(data)

    # ---------------------------------------------------------------- fitting and prediction
    def fit(self, train_dataset, eval_dataset=None, *, metric=None) -> dict[str, Any]:
        """Query the server once per new training input (plus the content-free prompt), then fit the decoder
        (auto mode chooses by `metric`, as `DecTModel.fit`).

        Returns DecT's fit report plus what it cost: requests by kind, retries, prompts answered from the cache,
        prompt tokens (as the server counts them) and wall seconds.
        """
        before = self.endpoint.stats.copy()
        missing_before = dict(self.backbone.missing_counts)
        self.state.content_free = None  # recomputed (from the cache when known): the server may have changed models
        report = self.core.fit(train_dataset, eval_dataset, with_decoder=self.uses_hidden, metric=metric)
        self.fit_metric = metric
        self.config.recorded.hidden_size = int(self.state.weights.W.shape[-1]) if self.uses_hidden else None
        cost = self.endpoint.stats.since(before)
        missing = {w: n - missing_before.get(w, 0) for w, n in self.backbone.missing_counts.items()}
        report |= {
            "epochs": report.get("epochs", 0),
            "model_passes": cost.prompts_sent,
            **cost.report(),
            "wall_seconds": report["feature_seconds"] + report["decoder_seconds"],
            "missing_label_words": {w: n for w, n in missing.items() if n > 0},
        }
        self.run_record.start_fit(report)
        return report

    def predict_logits(self, inputs) -> torch.Tensor:
        """Class logits (N, C) for texts, (text_a, text_b) pairs, a dict of columns or a Dataset."""
        return self.core.logits(inputs)

    def streaming(self):
        """Under this context the server's answers bypass the request cache (memory and file), so that
        `predict_stream` takes memory independent of the number of inputs."""
        return self.endpoint.transient_cache()

    # ---------------------------------------------------------------- saving and loading
    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write adapter_config.json, the decoder as safetensors, the endpoint settings (no API key) and a card."""
        tensors = self.state.tensors()
        settings = {
            "lam": self.state.lam,
            "calibrate": self.state.calibrate,
            "record": self.run_record.as_dict(),
            # how label words were scored: prediction must make its features the way the fit did
            "missing_label_words": self.backbone.missing,
            "label_token_ids": self.backbone.token_ids,
        }
        with staged_folder(save_directory) as staging:
            save_file(tensors, os.path.join(staging, WEIGHTS_FILE), metadata={"format": "pt"})
            self.config.save_pretrained(staging)
            write_endpoint_file(staging, self.endpoint.settings(), settings)
            Path(staging, "README.md").write_text(remote_card(self.run_record, self.config), encoding="utf-8")

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, endpoint: OpenAIEndpoint | None = None, **endpoint_kwargs: Any
    ) -> BlackBoxDecT:
        """Load a saved black-box adapter; the endpoint is rebuilt from the saved settings unless one is given
        (`endpoint_kwargs`, e.g. `url=...` or `cache_file=...`, override the saved settings). Label words are scored
        as at fit time (the saved `missing_label_words` rule and token ids).

        A saved adapter names its server and model only (`peft_dect.remote.saved.SAVED_SETTINGS`); a key or a cache
        file found in it is ignored with a warning, so that a shared adapter can neither choose where your key goes
        nor where a file is written. The environment's `OPENAI_API_KEY` is sent only to URLs you give (`url=`, and
        `embedding_url=` where the adapter saved one): for the saved URL, pass `api_key=` to send a key.
        """
        folder = Path(directory)
        saved = read_endpoint_file(folder)
        try:
            tensors = load_file(str(folder / WEIGHTS_FILE))
        except (SafetensorError, OSError) as err:
            raise ValueError(f"{folder / WEIGHTS_FILE} is not a readable safetensors file ({err}).") from None
        config = DecTConfig.from_pretrained(str(folder))
        if endpoint is None:
            endpoint = OpenAIEndpoint(**endpoint_arguments(saved["endpoint"], endpoint_kwargs, folder / REMOTE_FILE))
        out = cls(
            config,
            endpoint,
            missing_label_words=saved.get("missing_label_words", "exact"),
            label_token_ids=saved.get("label_token_ids"),
        )
        out.state.load_tensors(tensors, len(config.classes), str(folder / WEIGHTS_FILE))
        if out.state.weights is not None and not endpoint.embeddings:
            raise ValueError(
                "This adapter has a decoder fitted on embeddings, but the endpoint was created with embeddings=False."
            )
        out.state.lam, out.state.calibrate = float(saved.get("lam", 0.0)), bool(saved.get("calibrate", True))
        out.run_record = saved_run_record(saved, out.run_record)
        return out
