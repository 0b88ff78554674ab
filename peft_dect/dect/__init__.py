"""DecT, Decoder Tuning (Cui et al., ACL 2023, arXiv 2212.08408), as a PEFT method."""

from .config import DecTConfig
from .layer import DecTLayer
from .model import DecTModel


__all__ = ["DecTConfig", "DecTLayer", "DecTModel"]
