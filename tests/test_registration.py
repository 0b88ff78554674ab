"""Registration with peft, and what a user sees when the import is missing."""

import importlib
import subprocess
import sys
import textwrap

from conftest import LABEL_WORDS, TEMPLATE, tiny_roberta
from peft import PeftConfig, get_peft_model
from peft.utils.peft_types import PeftType, TaskType

import peft_dect
from peft_dect import DecTConfig


def test_import_registers_the_peft_type_and_task_type():
    assert PeftType("DECT") is PeftType.DECT and "DECT" in list(PeftType)
    assert TaskType("FEW_SHOT_CLS") is TaskType.FEW_SHOT_CLS
    importlib.reload(peft_dect.dect)  # registering again is a no-op
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    assert PEFT_TYPE_TO_CONFIG_MAPPING[PeftType.DECT] is DecTConfig


def test_loading_without_import_fails_and_with_import_works(bpe_tokenizer, tmp_path):
    model = get_peft_model(tiny_roberta(bpe_tokenizer), DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS))
    model.save_pretrained(tmp_path)
    code = textwrap.dedent(f"""
        from peft import PeftConfig
        PeftConfig.from_pretrained({str(tmp_path)!r})
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode != 0 and "DECT" in run.stderr
    assert isinstance(PeftConfig.from_pretrained(tmp_path), DecTConfig)
