"""The one place that extends peft's `PeftType` and `TaskType` enums with peft-dect's names (a leaf module).

peft's `register_peft_method` only accepts names already in `PeftType`, and `PeftConfig` only accepts task types
already in `TaskType`, so both are extended here, idempotently, before any config or registration uses them.
"""

from __future__ import annotations

import enum

from peft.utils.peft_types import PeftType, TaskType


FEW_SHOT_CLS = "FEW_SHOT_CLS"
"""Task type of peft-dect adapters: a language model used as a few-shot sequence classifier."""
DECT = "DECT"
"""peft type of DecT adapters."""


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


FEW_SHOT_CLS_TYPE = extend_enum(TaskType, FEW_SHOT_CLS)
DECT_TYPE = extend_enum(PeftType, DECT)
