"""peft-dect: few-shot text classification on frozen or lightly tuned language models, as PEFT methods.

Importing this package registers its methods with peft, so that `get_peft_model`, `PeftConfig.from_pretrained`
and `PeftModel.from_pretrained` work on peft-dect adapters, and the ``few-shot-classification`` task with
`transformers.pipeline`.
"""

from ._enums import FEW_SHOT_CLS
from .backbone import Backbone
from .classifier import FewShotClassifier, LabelWordClassifier
from .dect import ClassQuestions, DecTConfig, DecTModel
from .features import FeatureCache, Features
from .peft_model import PeftModelForFewShotClassification
from .pipeline import FewShotClassificationPipeline
from .prompt_tuning import PromptEnsemble, get_prompt_tuning_model, init_soft_prompt
from .prompting import Template, Verbalizer
from .quantize import quantize_int8
from .settings import DemonstrationConfig, PromptSettings


__version__ = "0.1.0"

__all__ = [
    "FEW_SHOT_CLS",
    "Backbone",
    "ClassQuestions",
    "DecTConfig",
    "DecTModel",
    "DemonstrationConfig",
    "FeatureCache",
    "Features",
    "FewShotClassificationPipeline",
    "FewShotClassifier",
    "LabelWordClassifier",
    "PeftModelForFewShotClassification",
    "PromptEnsemble",
    "PromptSettings",
    "Template",
    "Verbalizer",
    "get_prompt_tuning_model",
    "init_soft_prompt",
    "quantize_int8",
]
