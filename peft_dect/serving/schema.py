"""The JSON bodies of the server: the Hugging Face Inference API's text-classification request, with peft-dect's
extras, and the hot-add request."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr


class Parameters(BaseModel):
    """``parameters`` of a classification request.

    Args:
        top_k: classes per text, most probable first (None: every class).
        reject: answer the adapter's reject label for out-of-scope texts: true (the threshold chosen on held-out
            data) or a number (a fixed unknown-score threshold).
        predict_set: miscoverage alpha of a conformal prediction set per text, in (0, 1).
    """

    model_config = ConfigDict(extra="forbid")

    top_k: StrictInt | None = Field(default=None, ge=1)
    reject: StrictBool | StrictFloat | StrictInt | None = None
    predict_set: StrictFloat | None = Field(default=None, gt=0, lt=1)
    function_to_apply: StrictStr | None = Field(default=None, pattern="^softmax$")  # the only one (calibrated)


class ClassifyRequest(BaseModel):
    """``{"inputs": str | [str], "parameters": {...}}``."""

    model_config = ConfigDict(extra="forbid")

    inputs: StrictStr | list[StrictStr] = Field(min_length=1)
    parameters: Parameters = Field(default_factory=Parameters)


class AddAdapterRequest(BaseModel):
    """``{"source": folder or Hub id, "name": optional}`` of ``POST /admin/adapters``."""

    model_config = ConfigDict(extra="forbid")

    source: StrictStr = Field(min_length=1)
    name: StrictStr | None = None
