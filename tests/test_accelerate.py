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


def run_script(out: Path, processes: int) -> dict[str, torch.Tensor]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    if processes == 1:
        cmd = [sys.executable, str(SCRIPT), str(out)]
    else:
        # `--multi_gpu` selects accelerate's torchrun launcher; with no GPU the processes use gloo on the CPU.
        # The launcher runs under this interpreter, so the processes import the peft_dect under test.
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes)]
        options = ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        cmd = [*launch, *options, "--main_process_port", str(_free_port()), str(SCRIPT), str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=SCRIPT.parent)
    assert run.returncode == 0, run.stderr[-3000:]
    return load_file(out)


def test_two_processes_give_bit_identical_features_and_decoder(bpe_tokenizer, tmp_path):
    """Same seed, 1 vs 2 processes: every feature, decoder tensor and probability is equal bit for bit."""
    single, dist = run_script(tmp_path / "one.safetensors", 1), run_script(tmp_path / "two.safetensors", 2)
    assert single["processes"].item() == 1 and dist["processes"].item() == 2
    for name in ("hidden", "label_logits", "dect_W", "dect_radii", "dect_prototypes", "dect_content_free", "proba"):
        assert torch.equal(dist[name], single[name]), name
    assert torch.equal(dist["dect_settings"], single["dect_settings"])  # lam, calibrate, fitted: same choice
    # each of the 2 processes ran about half of the inputs the single process ran
    assert dist["fit_passes"].item() < single["fit_passes"].item()
    assert dist["local_passes"].item() <= single["local_passes"].item() / 2 + 16

    # and the script's single process computes what this test process computes
    model = get_peft_model(tiny_llama(bpe_tokenizer), DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS))
    model.fit(sentiment_data(16, 1), tokenizer=bpe_tokenizer, show_progress=False)
    layer = model.base_model.dect_layer
    torch.testing.assert_close(single["dect_W"], layer.dect_W["default"].detach(), atol=1e-5, rtol=1e-5)


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
