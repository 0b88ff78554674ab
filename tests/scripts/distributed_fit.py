"""Run by `accelerate launch --num_processes 2 --cpu`: extract features and fit DecT across processes.

Rank 0 writes the features and the fitted decoder to the safetensors file named on the command line.
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
    assert state is not None and state.num_processes == 2, "launch with accelerate --num_processes 2"
    tok = _byte_bpe()
    model = get_peft_model(tiny_llama(tok), DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS))
    train, test = sentiment_data(16, 1), sentiment_data(7, 2)  # 14 test texts: an uneven split is exercised too
    report = model.fit(train, tokenizer=tok, show_progress=False)
    bb = model.base_model.backbone()
    feats = bb.extract(test["sentence"])
    layer = model.base_model.dect_layer
    local_passes = torch.tensor([float(bb.passes)])
    if state.is_main_process:
        save_file(
            {
                "hidden": feats.hidden,
                "label_logits": feats.label_logits,
                "W": layer.dect_W["default"].detach().contiguous(),
                "radii": layer.dect_radii["default"].detach(),
                "proba": torch.from_numpy(model.predict_proba(test["sentence"])),
                "local_passes": local_passes,
                "fit_passes": torch.tensor([float(report["model_passes"])]),
            },
            out,
        )
    state.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1])
