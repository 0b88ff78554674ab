"""`peft-dect serve` as a user runs it: a subprocess on 127.0.0.1, one adapter refused for another base model."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest
from conftest import LABEL_WORDS, sentiment_data, tiny_llama
from peft import get_peft_model
from serve_util import request
from test_hub import wider_llama

from peft_dect import DecTConfig


KEY = "cli-token-abcdefgh"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_help_names_the_serving_options():
    out = subprocess.run([sys.executable, "-m", "peft_dect.cli", "serve", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for option in ("--api-key", "--max-batch", "--max-wait-ms", "--max-queue", "--no-batching", "--max-body-bytes"):
        assert option in out.stdout


@pytest.fixture(scope="module")
def folders(tmp_path_factory, bpe_tokenizer):
    root = tmp_path_factory.mktemp("serve-cli")
    tiny_llama(bpe_tokenizer).save_pretrained(root / "tiny-llama")
    bpe_tokenizer.save_pretrained(root / "tiny-llama")
    model = get_peft_model(
        tiny_llama(bpe_tokenizer), DecTConfig(template="{text_a} It was {mask}.", label_words=LABEL_WORDS)
    )
    model.fit(sentiment_data(16, 1), tokenizer=bpe_tokenizer, show_progress=False)
    model.save_pretrained(root / "sst")
    wide = get_peft_model(
        wider_llama(bpe_tokenizer), DecTConfig(template="{text_a} It was {mask}.", label_words=LABEL_WORDS)
    )
    wide.save_pretrained(root / "wide")
    return root, model.predict_proba(["a gorgeous, moving film"], tokenizer=bpe_tokenizer)


def test_serve_starts_refuses_an_adapter_for_another_base_model_and_answers(folders):
    root, expected = folders
    port = free_port()
    command = [sys.executable, "-m", "peft_dect.cli", "serve", f"good={root / 'sst'}", str(root / "wide")]
    command += ["--model", str(root / "tiny-llama"), "--port", str(port), "--quiet"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PEFT_DECT_API_KEY": KEY}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "the server did not answer /health within 120 s"
            try:
                if request(port, "GET", "/health", timeout=2)[0] == 200:
                    break
            except OSError:
                time.sleep(0.3)
        auth = {"Authorization": f"Bearer {KEY}"}
        status, _, body = request(port, "POST", "/models/good", {"inputs": "a gorgeous, moving film"}, auth)
        assert status == 200
        scores = {s["label"]: s["score"] for s in body[0]}
        assert scores == pytest.approx(dict(zip(LABEL_WORDS, map(float, expected[0]))), abs=1e-6)
        status, _, body = request(port, "GET", "/models", headers=auth)
        assert [a["name"] for a in body["adapters"]] == ["good"]
        assert request(port, "GET", "/models")[0] == 401
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "wide was not loaded" in err and "hidden size 48" in err
    logs = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert {"classify", "unauthorized"} <= {entry.get("event") for entry in logs}
    assert KEY not in err
