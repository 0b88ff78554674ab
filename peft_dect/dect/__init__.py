"""DecT, Decoder Tuning (Cui et al., ACL 2023, arXiv 2212.08408), as a PEFT method.

Importing this package registers DecT with peft, as peft's own tuners register themselves in their `__init__`.
"""

from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
from peft.utils import register_peft_method

from .._enums import DECT_TYPE
from .config import DecTConfig, RecordedValues
from .core import DecTCore, DecTState
from .layer import DecTLayer
from .model import DecTModel
from .questions import ClassQuestions


__all__ = ["ClassQuestions", "DecTConfig", "DecTCore", "DecTLayer", "DecTModel", "DecTState", "RecordedValues"]

if DECT_TYPE not in PEFT_TYPE_TO_CONFIG_MAPPING:  # a reloaded module must not register twice
    register_peft_method(name="dect", config_cls=DecTConfig, model_cls=DecTModel, prefix=DecTModel.prefix)
