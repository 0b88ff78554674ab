"""The backbone switches of the command line: `--dtype` (the weights' precision), `--llama-cpp GGUF` (the body
run in-process by llama.cpp) and `--int8` (the body's linear layers int8 per token), on the tiny Llama of the other
CLI tests and its float32 GGUF file.

Commands run in-process through `peft_dect.commands.run` where a test looks inside (which dtype the backbone ran
in, whether llama.cpp ran the body); errors a user sees run as a subprocess, as in `test_cli`.

Tolerances: bfloat16 keeps 8 bits of mantissa; through the fitted decoder (whose temperature sharpens the logits)
the tiny model's probabilities moved by at most 0.03 from float32's when this was written, asserted within 0.06.
llama.cpp on the float32 GGUF file agrees with PyTorch to 2e-3 on features (see `test_llama_cpp`), and its
probabilities through the same decoder are asserted within 1e-2. int8 per token moved the float32 adapter's
probabilities by at most 0.021 when this was written, asserted within 0.06.
"""

import json
import os
import socket

import pytest
import torch
from conftest import LABEL_WORDS, TEMPLATE, sentiment_data, tiny_llama
from peft import get_peft_model
from test_cli import ENV, cli, write_workspace

from peft_dect import DecTConfig, commands
from peft_dect.backbone import Backbone
from peft_dect.cli import build_parser


BF16_PROBABILITY_TOLERANCE = 0.06
LLAMA_CPP_PROBABILITY_TOLERANCE = 1e-2
INT8_PROBABILITY_TOLERANCE = 0.06


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, bpe_tokenizer):
    """(root, model folder, float32 adapter fitted by `peft-dect fit`, test file) on the tiny Llama."""
    root = tmp_path_factory.mktemp("cli-backbone")
    model_dir = write_workspace(root, bpe_tokenizer)
    adapter = root / "adapter"
    run(
        "fit", "--model", str(model_dir), "--train", str(root / "train.csv"), "--template", TEMPLATE,
        "--label-words", json.dumps(LABEL_WORDS), "--out", str(adapter), "--quiet",
    )  # fmt: skip
    return root, model_dir, adapter, root / "test.csv"


@pytest.fixture(scope="module")
def tiny_gguf(workspace, bpe_tokenizer):
    pytest.importorskip("llama_cpp")
    from gguf_writer import write_llama_gguf

    path = workspace[0] / "tiny-llama-f32.gguf"
    write_llama_gguf(tiny_llama(bpe_tokenizer), bpe_tokenizer, path)
    return path


def run(*argv: str) -> None:
    """One `peft-dect` command in this process (its output goes to the captured stdout)."""
    commands.run(build_parser().parse_args(list(argv)))


def predictions(capsys, adapter, test_file, *extra: str) -> list[dict]:
    """`peft-dect predict ADAPTER TEST --json` (with `extra` options): one record per text."""
    capsys.readouterr()
    run("predict", str(adapter), str(test_file), "--json", "--quiet", *extra)
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def positive(rows: list[dict]) -> torch.Tensor:
    return torch.tensor([row["probabilities"]["positive"] for row in rows])


@pytest.fixture
def forward_dtypes(monkeypatch):
    """The dtype of the model's parameters at every PyTorch pass of a backbone (`Backbone.forward`)."""
    seen: list[torch.dtype] = []
    forward = Backbone.forward

    def spy(self, *args, **kwargs):
        seen.append(next(self.model.parameters()).dtype)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(Backbone, "forward", spy)
    return seen


def test_bfloat16_runs_the_backbone_in_bfloat16_and_predicts_as_float32(workspace, capsys, forward_dtypes):
    _, _, adapter, test_file = workspace
    reference = predictions(capsys, adapter, test_file)
    assert forward_dtypes and set(forward_dtypes) == {torch.float32}
    forward_dtypes.clear()
    ours = predictions(capsys, adapter, test_file, "--dtype", "bfloat16")
    assert forward_dtypes and set(forward_dtypes) == {torch.bfloat16}  # the weights the pass ran with
    assert not torch.equal(positive(ours), positive(reference))  # another precision really ran
    torch.testing.assert_close(positive(ours), positive(reference), atol=BF16_PROBABILITY_TOLERANCE, rtol=0)
    assert [r["label"] for r in ours] == [r["label"] for r in reference]


def test_fit_with_bfloat16_saves_an_adapter_that_predicts(workspace, tmp_path, capsys, forward_dtypes):
    root, model_dir, _, test_file = workspace
    run(
        "fit", "--model", str(model_dir), "--train", str(root / "train.csv"), "--template", TEMPLATE,
        "--label-words", json.dumps(LABEL_WORDS), "--out", str(tmp_path / "bf16"), "--mode", "faithful",
        "--dtype", "bfloat16", "--quiet",
    )  # fmt: skip
    assert set(forward_dtypes) == {torch.bfloat16}
    rows = predictions(capsys, tmp_path / "bf16", test_file, "--dtype", "bfloat16")
    assert len(rows) == 20 and {r["label"] for r in rows} <= set(LABEL_WORDS)


def test_a_streamed_output_resumes_only_with_the_same_precision(workspace, tmp_path, capsys):
    _, _, adapter, test_file = workspace
    output = tmp_path / "out.jsonl"
    run("predict", str(adapter), str(test_file), "--output", str(output), "--quiet", "--json")
    assert len(output.read_text().splitlines()) == 20
    with pytest.raises(ValueError, match="another classifier.*bfloat16"):
        run("predict", str(adapter), str(test_file), "--output", str(output), "--quiet", "--dtype", "bfloat16")
    capsys.readouterr()
    run("predict", str(adapter), str(test_file), "--output", str(output), "--quiet", "--json", "--dtype", "float32")
    assert json.loads(capsys.readouterr().out)["written"] == 0  # float32 named or not: the same output, complete


def test_an_unsupported_dtype_fails_before_the_model_loads_naming_the_supported_ones(workspace):
    root, _, adapter, test_file = workspace
    # the base model named does not exist: the dtype is refused before anything tries to load it
    for bad in ("float16", "int8"):
        out = cli("predict", str(adapter), str(test_file), "--model", str(root / "absent"), "--dtype", bad)
        assert out.returncode == 2
        assert f"dtype {bad!r} is not supported on cpu: choose one of ['bfloat16', 'float32']" in out.stderr
    out = cli("fit", "--endpoint", "http://127.0.0.1:9", "--model", "m", "--train", str(root / "train.csv"),
              "--out", str(root / "never"), "--dtype", "bfloat16")  # fmt: skip
    assert out.returncode == 2 and "--dtype applies to an in-process model" in out.stderr


@pytest.fixture
def int8_passes(monkeypatch):
    """Per PyTorch pass of a backbone (`Backbone.forward`), how many of the model's layers are `Int8Linear`."""
    from peft_dect.int8_linear import Int8Linear

    seen: list[int] = []
    forward = Backbone.forward

    def spy(self, *args, **kwargs):
        seen.append(sum(isinstance(m, Int8Linear) for m in self.model.modules()))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(Backbone, "forward", spy)
    return seen


def test_int8_quantises_the_body_per_token_for_fit_and_predict(workspace, tmp_path, capsys, int8_passes):
    root, model_dir, adapter, test_file = workspace
    reference = predictions(capsys, adapter, test_file)
    assert int8_passes and set(int8_passes) == {0}
    int8_passes.clear()
    ours = predictions(capsys, adapter, test_file, "--int8")  # the float32 adapter on the int8 body
    assert int8_passes and set(int8_passes) == {14}  # q/k/v/o and gate/up/down of 2 layers; the LM head stays
    assert not torch.equal(positive(ours), positive(reference))
    torch.testing.assert_close(positive(ours), positive(reference), atol=INT8_PROBABILITY_TOLERANCE, rtol=0)
    run(
        "fit", "--model", str(model_dir), "--train", str(root / "train.csv"), "--template", TEMPLATE,
        "--label-words", json.dumps(LABEL_WORDS), "--out", str(tmp_path / "int8"), "--mode", "faithful",
        "--int8", "--quiet",
    )  # fmt: skip
    rows = predictions(capsys, tmp_path / "int8", test_file, "--int8")
    assert len(rows) == 20 and {r["label"] for r in rows} <= set(LABEL_WORDS)
    output = tmp_path / "out.jsonl"
    run("predict", str(adapter), str(test_file), "--output", str(output), "--quiet")
    with pytest.raises(ValueError, match="another classifier.*int8"):  # a streamed output resumes on its own path
        run("predict", str(adapter), str(test_file), "--output", str(output), "--quiet", "--int8")


def test_int8_with_another_backbone_option_is_refused(workspace):
    _, _, adapter, test_file = workspace
    out = cli("predict", str(adapter), str(test_file), "--int8", "--dtype", "bfloat16")
    assert out.returncode == 2 and "--int8 quantises a float32 model on the CPU: drop --dtype" in out.stderr


@pytest.fixture
def runner_calls(monkeypatch):
    """Prompts the llama.cpp runner ran (`LlamaCppRunner.hidden`)."""
    from peft_dect.llama_cpp_runner import LlamaCppRunner

    calls: list[int] = []
    hidden = LlamaCppRunner.hidden

    def spy(self, rows):
        calls.append(len(rows))
        return hidden(self, rows)

    monkeypatch.setattr(LlamaCppRunner, "hidden", spy)
    return calls


def test_llama_cpp_predicts_and_evaluates_as_pytorch(workspace, tiny_gguf, capsys, runner_calls, forward_dtypes):
    _, _, adapter, test_file = workspace
    reference = predictions(capsys, adapter, test_file)
    assert not runner_calls
    forward_dtypes.clear()
    ours = predictions(capsys, adapter, test_file, "--llama-cpp", str(tiny_gguf))
    assert sum(runner_calls) == len(ours) + 1 and not forward_dtypes  # the texts and the content-free input
    assert [r["label"] for r in ours] == [r["label"] for r in reference]
    torch.testing.assert_close(positive(ours), positive(reference), atol=LLAMA_CPP_PROBABILITY_TOLERANCE, rtol=0)
    capsys.readouterr()
    run("evaluate", str(adapter), "--test", str(test_file), "--json", "--quiet")
    plain = json.loads(capsys.readouterr().out)
    run("evaluate", str(adapter), "--test", str(test_file), "--json", "--quiet", "--llama-cpp", str(tiny_gguf))
    assert json.loads(capsys.readouterr().out) == plain


def test_fit_through_llama_cpp(workspace, tiny_gguf, tmp_path, runner_calls):
    root, model_dir, _, _ = workspace
    run(
        "fit", "--model", str(model_dir), "--train", str(root / "train.csv"), "--template", TEMPLATE,
        "--label-words", json.dumps(LABEL_WORDS), "--out", str(tmp_path / "ll"), "--mode", "faithful",
        "--llama-cpp", str(tiny_gguf), "--quiet",
    )  # fmt: skip
    assert sum(runner_calls) == 33  # 32 training texts and the content-free input
    assert (tmp_path / "ll" / "adapter_model.safetensors").is_file()


def test_llama_cpp_errors_name_the_fix(workspace, tiny_gguf, tmp_path, bpe_tokenizer):
    root, model_dir, adapter, test_file = workspace
    out = cli("predict", str(adapter), str(test_file), "--llama-cpp", str(root / "absent.gguf"))
    assert out.returncode == 2 and "does not exist; give the path of a .gguf model file" in out.stderr
    fake = tmp_path / "site" / "llama_cpp"  # an installed llama-cpp-python that cannot be imported
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('llama_cpp is not built')\n")
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(fake.parent), ENV.get("PYTHONPATH", "")])}
    out = cli("predict", str(adapter), str(test_file), "--model", str(root / "absent"), "--llama-cpp",
              str(tiny_gguf), env=env)  # fmt: skip
    assert out.returncode == 2 and "needs llama-cpp-python: run `pip install llama-cpp-python`" in out.stderr
    # label words of several tokens continue the prompt's key/value cache, which llama.cpp does not expose:
    # `serve` refuses the adapter at start, not at its first request
    words = {"negative": ["not good at all"], "positive": ["very good"]}
    model = get_peft_model(tiny_llama(bpe_tokenizer), DecTConfig(template=TEMPLATE, label_words=words))
    model.fit(sentiment_data(8, 1), tokenizer=bpe_tokenizer, show_progress=False)
    model.save_pretrained(tmp_path / "long")
    with socket.socket() as taken:  # were the adapter served, the server could not listen and would stop at once
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        out = cli("serve", str(tmp_path / "long"), "--model", str(model_dir), "--port", port, "--llama-cpp",
                  str(tiny_gguf), "--quiet")  # fmt: skip
    assert out.returncode == 2 and "Adapter 'long' cannot run with --llama-cpp" in out.stderr
    assert "multi_token='first'" in out.stderr
