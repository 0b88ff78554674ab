"""Black-box DecT: models that peft-dect reaches only over an OpenAI-compatible HTTP API (llama.cpp, vLLM, ...)."""

from .client import EndpointError, OpenAIEndpoint, RequestStats, ResponseCache
from .dect import BlackBoxDecT
from .features import RemoteBackbone


__all__ = ["BlackBoxDecT", "EndpointError", "OpenAIEndpoint", "RemoteBackbone", "RequestStats", "ResponseCache"]
