"""A GGUF causal LM run in-process by llama.cpp (`llama-cpp-python`): hidden states at the prediction position.

The body of the model runs in llama.cpp with its quantised weights as stored (SmolLM2's Q4_1 file, for one) and
its CPU kernels; the LM head stays the PyTorch model's, applied at the prediction position only (see
`Backbone.label_scores_of`), so label-word scores are computed one way whichever adapter asks for them.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch


GGUF_MAGIC = b"GGUF"
INSTALL = "pip install llama-cpp-python"


def import_llama_cpp():
    """The `llama_cpp` module of llama-cpp-python; an ImportError naming the install command if it is missing."""
    try:
        import llama_cpp
    except ImportError:
        raise ImportError(f"The llama.cpp backbone needs llama-cpp-python: run `{INSTALL}`.") from None
    return llama_cpp


def check_gguf_file(gguf_file: str | os.PathLike) -> Path:
    """`gguf_file` as a Path if it is a file with a GGUF header, else a ValueError naming the fix."""
    path = Path(gguf_file)
    if not path.is_file():
        raise ValueError(f"GGUF file {str(path)!r} does not exist; give the path of a .gguf model file.")
    with open(path, "rb") as fh:
        if fh.read(4) != GGUF_MAGIC:
            raise ValueError(f"{str(path)!r} is not a GGUF file (no GGUF header); give a .gguf model file.")
    return path


def file_fingerprint(path: Path) -> str:
    """A digest of a GGUF file's size and its first and last megabyte (the header names every tensor)."""
    digest = hashlib.sha1(str(path.stat().st_size).encode())
    with open(path, "rb") as fh:
        digest.update(fh.read(1 << 20))
        fh.seek(max(0, path.stat().st_size - (1 << 20)))
        digest.update(fh.read(1 << 20))
    return digest.hexdigest()


class LlamaCppRunner:
    """Runs a GGUF causal LM through llama.cpp and returns the final hidden state (after the last norm, as
    `transformers` gives it) at the last token of each prompt.

    Args:
        gguf_file: path of the GGUF model file.
        n_threads: CPU threads (default: PyTorch's thread count).
        n_ctx: tokens of key/value memory, the most one `hidden` batch holds (longer prompts are an error).
        max_sequences: prompts decoded together in one llama.cpp batch.
    """

    name = "llama.cpp"  # how the backbone's errors call this runner

    def __init__(
        self,
        gguf_file: str | os.PathLike,
        *,
        n_threads: int | None = None,
        n_ctx: int = 4096,
        max_sequences: int = 16,
    ) -> None:
        llama_cpp = import_llama_cpp()
        path = check_gguf_file(gguf_file)
        for name, value, low in (("n_ctx", n_ctx, 16), ("max_sequences", max_sequences, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")
        self.lib = llama_cpp
        self.path = path
        quiet_logs(llama_cpp)
        self.model = llama_cpp.llama_model_load_from_file(str(path).encode(), llama_cpp.llama_model_default_params())
        if not self.model:
            raise ValueError(f"llama.cpp cannot load {str(path)!r} as a model (an unsupported architecture or a "
                             "damaged file).")  # fmt: skip
        params = llama_cpp.llama_context_default_params()
        threads = n_threads or torch.get_num_threads()
        params.n_ctx = params.n_batch = params.n_ubatch = n_ctx
        params.n_seq_max = max_sequences
        params.n_threads = params.n_threads_batch = threads
        params.embeddings = True
        params.pooling_type = llama_cpp.LLAMA_POOLING_TYPE_NONE
        self.context = llama_cpp.llama_init_from_model(self.model, params)
        if not self.context:
            llama_cpp.llama_model_free(self.model)
            raise ValueError(f"llama.cpp could not make a context of {n_ctx} tokens for {str(path)!r}.")
        self.n_ctx = n_ctx
        self.max_sequences = max_sequences
        self.hidden_size = int(llama_cpp.llama_model_n_embd(self.model))
        self.vocab_size = int(llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(self.model)))
        self.fingerprint = f"llama.cpp|{file_fingerprint(path)}"

    def __del__(self) -> None:
        try:
            self.close()
        except TypeError:  # interpreter shutdown: llama_cpp's functions are already gone
            pass

    def check_sizes(self, hidden_size: int, vocab_size: int) -> None:
        """Refuse a PyTorch model of another hidden size or vocabulary than this GGUF model's, naming both."""
        if (self.hidden_size, self.vocab_size) != (hidden_size, vocab_size):
            raise ValueError(
                f"The GGUF model {str(self.path)!r} (hidden size {self.hidden_size}, vocabulary {self.vocab_size}) "
                f"is not this base model (hidden size {hidden_size}, vocabulary {vocab_size}): give the GGUF file of "
                "the same causal LM."
            )

    def close(self) -> None:
        """Free llama.cpp's context and model (the runner cannot be used afterwards)."""
        lib = getattr(self, "lib", None)
        if lib is None:
            return
        if getattr(self, "context", None):
            lib.llama_free(self.context)
        if getattr(self, "model", None):
            lib.llama_model_free(self.model)
        self.context = self.model = None

    def chunks(self, rows: Sequence[Sequence[int]]) -> list[list[int]]:
        """Indices of `rows` grouped so that each group fits one llama.cpp batch (tokens and sequences)."""
        groups: list[list[int]] = [[]]
        tokens = 0
        for i, row in enumerate(rows):
            if not row or len(row) > self.n_ctx:
                raise ValueError(f"A prompt of {len(row)} tokens does not fit the llama.cpp context (n_ctx="
                                 f"{self.n_ctx}); raise n_ctx or shorten the prompts (max_length).")  # fmt: skip
            if groups[-1] and (tokens + len(row) > self.n_ctx or len(groups[-1]) == self.max_sequences):
                groups.append([])
                tokens = 0
            groups[-1].append(i)
            tokens += len(row)
        return [g for g in groups if g]

    def hidden(self, rows: Sequence[Sequence[int]]) -> torch.Tensor:
        """Final hidden states (N, H), float32, at the last token of each token id list."""
        if self.context is None:
            raise ValueError("This llama.cpp runner was closed; make a new one.")
        lib = self.lib
        out = np.empty((len(rows), self.hidden_size), dtype=np.float32)
        for group in self.chunks(rows):
            total = sum(len(rows[i]) for i in group)
            batch = lib.llama_batch_init(total, 0, len(group))
            try:
                k, last = 0, []
                for seq, i in enumerate(group):
                    for pos, token in enumerate(rows[i]):
                        batch.token[k], batch.pos[k], batch.n_seq_id[k] = int(token), pos, 1
                        batch.seq_id[k][0] = seq
                        batch.logits[k] = pos == len(rows[i]) - 1  # outputs only where the features are read
                        k += 1
                    last.append(k - 1)
                batch.n_tokens = total
                code = lib.llama_decode(self.context, batch)
                if code != 0:
                    raise RuntimeError(f"llama.cpp could not decode a batch of {len(group)} prompts (code {code}).")
                for i, index in zip(group, last):
                    vector = lib.llama_get_embeddings_ith(self.context, index)
                    out[i] = np.ctypeslib.as_array(vector, shape=(self.hidden_size,))
            finally:
                lib.llama_batch_free(batch)
                lib.llama_memory_clear(lib.llama_get_memory(self.context), True)
        return torch.from_numpy(out)


_LOG_CALLBACK = []  # the ctypes callback that silences llama.cpp's logs, kept alive for the process


def quiet_logs(llama_cpp) -> None:
    """Route llama.cpp's log lines (every model load prints dozens to stderr) to nowhere, once per process."""
    if not _LOG_CALLBACK:
        _LOG_CALLBACK.append(llama_cpp.llama_log_callback(lambda level, text, user_data: None))
        llama_cpp.llama_log_set(_LOG_CALLBACK[0], None)
