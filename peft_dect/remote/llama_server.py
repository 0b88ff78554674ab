"""Start and stop a local llama.cpp server (`llama-cpp-python[server]`) serving a GGUF file, for demos and tests.

One server answers both queries DecT makes: completions with log-probabilities (`logits_all`, on by default) and
embeddings (`--embedding true`; for SmolLM2 one vector per token, of which the client keeps the last).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from ..embedded import smollm2_gguf


logger = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def llama_cpp_server(
    model_path: str | os.PathLike | None = None,
    *,
    alias: str = "smollm2",
    port: int | None = None,
    threads: int = 1,
    n_ctx: int = 2048,
    startup_timeout: float = 120.0,
) -> Iterator[str]:
    """Serve `model_path` (default: the embedded SmolLM2 GGUF) on 127.0.0.1; yields the base URL.

    The server runs as a child process and is stopped on exit; its log goes to a temporary file quoted in the error
    if it fails to start within `startup_timeout` seconds.
    """
    if importlib.util.find_spec("llama_cpp") is None:
        raise ImportError("The llama.cpp server is not installed: run `pip install 'llama-cpp-python[server]'`.")
    if model_path is None:
        folder, name = smollm2_gguf()
        model_path = folder / name
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(model_path), "--model_alias", alias,
        "--host", "127.0.0.1", "--port", str(port),
        "--embedding", "true", "--n_threads", str(threads), "--n_threads_batch", str(threads),
        "--n_ctx", str(n_ctx), "--verbose", "false",
    ]  # fmt: skip
    log = tempfile.NamedTemporaryFile(prefix="llama-server-", suffix=".log", delete=False)
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    started = False
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                text = Path(log.name).read_text(errors="replace")[-2000:]
                reason = "exited" if process.poll() is not None else f"did not answer within {startup_timeout:g} s"
                raise RuntimeError(f"The llama.cpp server {reason}. Its log ({log.name}) ends with:\n{text}")
            try:
                with urllib.request.urlopen(url + "/v1/models", timeout=2) as reply:
                    if alias in json.dumps(json.load(reply)):
                        break
            except (urllib.error.URLError, OSError, ValueError):
                time.sleep(0.5)
        started = True
        logger.info("llama.cpp server for %s at %s", model_path, url)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        if started:  # a failed start keeps its log, which the error message quotes
            os.unlink(log.name)
