"""The one place that teaches peft about peft-dect's methods.

peft's `register_peft_method` only accepts names that already exist in its `PeftType` enum, and `PeftConfig`
only accepts task types that exist in its `TaskType` enum, so both enums are extended here (idempotently) before
registration. Importing `peft_dect` runs `register_all()` once.
"""

from __future__ import annotations

import enum

from peft.utils.peft_types import PeftType, TaskType


FEW_SHOT_CLS = "FEW_SHOT_CLS"
"""Task type of peft-dect adapters: a language model used as a few-shot sequence classifier."""


def extend_enum(enum_cls: type[enum.Enum], name: str) -> enum.Enum:
    """Add member `name` (value == name) to a `str` enum such as peft's `PeftType`; return it if already present."""
    if name in enum_cls.__members__:
        return enum_cls[name]
    member = str.__new__(enum_cls, name)
    member._name_ = name
    member._value_ = name
    member.__objclass__ = enum_cls
    member.__init__(name)
    type.__setattr__(enum_cls, name, member)
    enum_cls._member_map_[name] = member
    enum_cls._value2member_map_[name] = member
    enum_cls._member_names_.append(name)
    return member


_REGISTERED: set[str] = set()


def register_method(name: str, config_cls: type, model_cls: type) -> None:
    """Register a peft-dect tuner under `name` (lower case), extending `PeftType` first."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
    from peft.utils import register_peft_method

    extend_enum(PeftType, name.upper())
    if name.upper() in PEFT_TYPE_TO_CONFIG_MAPPING:
        _REGISTERED.add(name)
        return
    register_peft_method(name=name, config_cls=config_cls, model_cls=model_cls, prefix=model_cls.prefix)
    _REGISTERED.add(name)


def register_task_type(task_type: str, peft_model_cls: type) -> None:
    """Make `get_peft_model` / `PeftModel.from_pretrained` build `peft_model_cls` for configs of `task_type`."""
    from peft.auto import MODEL_TYPE_TO_PEFT_MODEL_MAPPING

    extend_enum(TaskType, task_type)
    MODEL_TYPE_TO_PEFT_MODEL_MAPPING[task_type] = peft_model_cls
    try:  # peft keeps a second copy of the mapping in `peft.peft_model` in some versions
        from peft import peft_model as _pm

        if hasattr(_pm, "MODEL_TYPE_TO_PEFT_MODEL_MAPPING"):
            _pm.MODEL_TYPE_TO_PEFT_MODEL_MAPPING[task_type] = peft_model_cls
    except ImportError:  # pragma: no cover
        pass


def register_all() -> None:
    """Register every peft-dect method with peft. Safe to call more than once."""
    from .dect import DecTConfig, DecTModel
    from .peft_model import PeftModelForFewShotClassification

    register_task_type(FEW_SHOT_CLS, PeftModelForFewShotClassification)
    register_method("dect", DecTConfig, DecTModel)
