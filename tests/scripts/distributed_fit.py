"""Extract features and fit DecT, in one process or under `accelerate launch --num_processes 2`.

The main process writes the features, the fitted decoder, the predictions and the model-pass counts to the
safetensors file named on the command line; tests/test_accelerate.py compares a 2-process run with a 1-process run.
"""

import os
import sys

import torch
from safetensors.torch import save_file


sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from conftest import LABEL_WORDS, TEMPLATE, _byte_bpe, sentiment_data, tiny_llama  # noqa: E402
from peft import get_peft_model  # noqa: E402

from peft_dect import DecTConfig  # noqa: E402
from peft_dect.backbone import distributed_state  # noqa: E402


def main(out: str) -> None:
    state = distributed_state()
    tok = _byte_bpe()
    model = get_peft_model(tiny_llama(tok), DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS))
    train, test = sentiment_data(16, 1), sentiment_data(7, 2)  # 14 test texts: an uneven split is exercised too
    report = model.fit(train, tokenizer=tok, show_progress=False)
    bb = model.base_model.backbone()
    feats = bb.extract(test["sentence"])
    layer = model.base_model.dect_layer
    if state is None or state.is_main_process:
        tensors = {
            "hidden": feats.hidden,
            "label_logits": feats.label_logits,
            "proba": torch.from_numpy(model.predict_proba(test["sentence"])),
            "local_passes": torch.tensor([float(bb.passes)]),
            "fit_passes": torch.tensor([float(report["model_passes"])]),
            "processes": torch.tensor([1 if state is None else state.num_processes]),
        }
        for name in ("dect_W", "dect_radii", "dect_prototypes", "dect_content_free", "dect_settings"):
            tensors[name] = getattr(layer, name)["default"].detach().contiguous()
        save_file(tensors, out)
    if state is not None:
        state.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1])
