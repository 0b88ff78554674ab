"""Black-box DecT: models that peft-dect reaches only over an OpenAI-compatible HTTP API (llama.cpp, vLLM, ...)."""

from .cache import ResponseCache
from .client import EndpointError, OpenAIEndpoint
from .dect import BlackBoxDecT
from .features import RemoteBackbone
from .stats import RequestStats


__all__ = ["BlackBoxDecT", "EndpointError", "OpenAIEndpoint", "RemoteBackbone", "RequestStats", "ResponseCache"]
