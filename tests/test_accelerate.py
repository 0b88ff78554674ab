"""Feature extraction split over 2 CPU processes (accelerate launch, gloo) equals the single-process result."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from conftest import LABEL_WORDS, TEMPLATE, sentiment_data, tiny_llama
from peft import get_peft_model
from safetensors.torch import load_file

from peft_dect import DecTConfig


SCRIPT = Path(__file__).parent / "scripts" / "distributed_fit.py"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_give_the_same_features_and_decoder(bpe_tokenizer, tmp_path):
    out = tmp_path / "dist.safetensors"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    # `--multi_gpu` selects accelerate's torchrun launcher; with no GPU the processes use gloo on the CPU.
    # The launcher runs under this interpreter, so the processes import the peft_dect under test.
    launch = "-m accelerate.commands.launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no"
    port = str(_free_port())
    cmd = [sys.executable, *launch.split(), "--dynamo_backend", "no", "--main_process_port", port, str(SCRIPT)]
    cmd.append(str(out))
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=SCRIPT.parent)
    assert run.returncode == 0, run.stderr[-3000:]
    dist = load_file(out)

    model = get_peft_model(tiny_llama(bpe_tokenizer), DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS))
    train, test = sentiment_data(16, 1), sentiment_data(7, 2)
    model.fit(train, tokenizer=bpe_tokenizer, show_progress=False)
    feats = model.base_model.backbone().extract(test["sentence"])
    layer = model.base_model.dect_layer

    torch.testing.assert_close(dist["hidden"], feats.hidden, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dist["label_logits"], feats.label_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dist["W"], layer.dect_W["default"].detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dist["radii"], layer.dect_radii["default"].detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        dist["proba"], torch.from_numpy(model.predict_proba(test["sentence"])), atol=1e-5, rtol=1e-5
    )
    # each process ran about half of the 33 training inputs (+ content-free) and 14 test inputs
    assert dist["fit_passes"].item() < 33 and dist["local_passes"].item() < 33 + 14


def test_model_placed_with_a_device_map(bpe_tokenizer, tmp_path):
    """A backbone dispatched by accelerate (device_map) works unchanged: inputs follow the model's first device."""
    from transformers import AutoModelForCausalLM

    tiny_llama(bpe_tokenizer).save_pretrained(tmp_path)
    placed = AutoModelForCausalLM.from_pretrained(tmp_path, device_map="auto")
    model = get_peft_model(placed, DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS))
    model.fit(sentiment_data(16, 1), tokenizer=bpe_tokenizer, show_progress=False)
    reference = get_peft_model(tiny_llama(bpe_tokenizer), DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS))
    reference.fit(sentiment_data(16, 1), tokenizer=bpe_tokenizer, show_progress=False)
    texts = sentiment_data(5, 2)["sentence"]
    torch.testing.assert_close(
        torch.from_numpy(model.predict_proba(texts)),
        torch.from_numpy(reference.predict_proba(texts)),
        atol=1e-5,
        rtol=1e-5,
    )
