"""peft-dect: few-shot text classification on frozen or lightly tuned language models, as PEFT methods.

Importing this package registers its methods with peft, so that `get_peft_model`, `PeftConfig.from_pretrained`
and `PeftModel.from_pretrained` work on peft-dect adapters.
"""

from .registry import FEW_SHOT_CLS, register_all


register_all()

from .backbone import Backbone  # noqa: E402
from .classifier import LabelWordClassifier  # noqa: E402
from .dect import DecTConfig, DecTModel  # noqa: E402
from .features import FeatureCache, Features  # noqa: E402
from .peft_model import PeftModelForFewShotClassification  # noqa: E402
from .prompting import Template, Verbalizer  # noqa: E402


__version__ = "0.1.0"

__all__ = [
    "FEW_SHOT_CLS",
    "Backbone",
    "DecTConfig",
    "DecTModel",
    "FeatureCache",
    "Features",
    "LabelWordClassifier",
    "PeftModelForFewShotClassification",
    "Template",
    "Verbalizer",
]
