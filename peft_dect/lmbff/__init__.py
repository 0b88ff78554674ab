"""LM-BFF (Gao, Fisch and Chen, ACL 2021): prompt-based fine-tuning, demonstrations, automatic prompts."""

from .config import LMBFFConfig
from .model import BestOnDevCallback, LMBFFModel


__all__ = ["BestOnDevCallback", "LMBFFConfig", "LMBFFModel"]
