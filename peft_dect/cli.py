"""The `peft-dect` command line: fit, evaluate, predict with, suggest for, push and serve DecT adapters, and run the
demo.

This module only parses the command line, so that `peft-dect --help` answers at once; the commands themselves are
`peft_dect.commands`, loaded (with torch, transformers and peft) once a command runs.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="peft-dect", description="Few-shot text classification with DecT adapters on frozen language models."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p, model_help="base model: 'smollm2' (embedded), a local folder or a Hub id"):
        p.add_argument("--model", default=None, help=model_help)
        p.add_argument("--kind", choices=["masked", "causal"], help="LM type when the config does not tell")
        p.add_argument("--json", action="store_true", help="machine-readable JSON output")
        p.add_argument("--quiet", action="store_true", help="no progress bars")

    def backbone(p):
        p.add_argument(
            "--dtype",
            metavar="DTYPE",
            help="precision of the in-process model's weights: float32 (default) or bfloat16 (fast on a CPU with "
            "AVX-512 BF16 or AMX, emulated and slow without)",
        )
        p.add_argument(
            "--llama-cpp",
            metavar="GGUF",
            help="run the model's body in-process with llama.cpp from this GGUF file of the same model ('smollm2': "
            "the embedded SmolLM2's), its quantised CPU kernels instead of PyTorch's; needs llama-cpp-python",
        )
        p.add_argument(
            "--int8",
            action="store_true",
            help="int8 weights and inputs (one scale per token; SmoothQuant for Llama-style models) for the body's "
            "linear layers of a float32 model on the CPU, as peft_dect.quantize_int8(model, tokenizer, "
            "activations='per_token', smooth_alpha=SMOOTH_ALPHA_PER_TOKEN): 2.3-2.4x float32's speed on SmolLM2 "
            "here, 0.3-1.7 accuracy points",
        )

    def remote(p, fitting: bool):
        p.add_argument(
            "--endpoint",
            help="base URL of an OpenAI-compatible server (llama.cpp, vLLM) to reach the model through"
            + ("" if fitting else "; default: the one the adapter was fitted with"),
        )
        p.add_argument("--concurrency", type=int, help="requests in flight at once (with --endpoint; default 4)")
        p.add_argument("--request-cache", help="JSON-lines file of server answers, so no prompt is sent twice")
        p.add_argument(
            "--prompts-per-request",
            help="prompts per completion request (with --endpoint): a number (default 1), or 'auto': lists of "
            "prompts where the server takes them, found out with one request, else one",
        )
        if fitting:
            p.add_argument("--top-logprobs", type=int, help="next-token candidates asked for (default 20)")
            p.add_argument("--no-embeddings", action="store_true", help="the server has no embeddings: logit term")
            p.add_argument(
                "--missing-label-words",
                choices=["exact", "floor", "error"],
                help="label words outside the top candidates: one more request each (exact, the default), the "
                "lowest candidate's log-probability (floor), or an error",
            )

    def data(p, split):
        p.add_argument("--task", help="a named task (LM-BFF k-shot layout), e.g. SST-2")
        p.add_argument("--data", default="data/fewshot", help="folder of the k-shot tasks (with --task)")
        p.add_argument(
            "--k", type=int, default=None,
            help="shots per class: of the task split (with --task, default 16), or sampled from --train (its dev "
            "split of the same size, from the remaining rows, is the eval data unless --eval is given)",
        )  # fmt: skip
        p.add_argument("--seed", type=int, default=13, help="data seed of the task split or of the --k sample")
        p.add_argument(f"--{split}", help=f"{split} data file: .csv or .tsv with a header, or .jsonl")

    fit = sub.add_parser("fit", help="fit a DecT adapter and save it")
    common(
        fit, "base model: 'smollm2' (embedded, default), a local folder or a Hub id; with --endpoint the served name"
    )
    data(fit, "train")
    fit.add_argument("--eval", help="eval data file for auto mode's choice (default with --task: its dev split)")
    fit.add_argument("--out", required=True, help="folder to save the adapter to")
    fit.add_argument("--template", help="prompt, e.g. '{text_a} In summary, it was {mask}'")
    fit.add_argument(
        "--label-words",
        help="'neg=bad,pos=great|good', a JSON object, or 'names': the class names as words (card_arrival -> card "
        "arrival)",
    )
    fit.add_argument("--mode", choices=["auto", "faithful"], default="auto")
    fit.add_argument(
        "--multi-label",
        action="store_true",
        help="several classes per text: labels as 'a|b|c' in CSV/TSV, lists in JSON Lines; predict prints sets",
    )
    fit.add_argument(
        "--metric",
        choices=["accuracy", "f1", "macro_f1", "matthews_correlation"],
        help="what auto mode maximises on held-out data (default: the task's metric, else accuracy)",
    )
    fit.add_argument("--lam", type=float, default=None, help="fusion weight (faithful mode); default 1/shots")
    fit.add_argument(
        "--budget",
        type=int,
        default=None,
        help="model passes per training input auto mode may spend on prompt candidates (default 2: the template "
        "alone and with one demonstration set; 1: the template alone)",
    )
    fit.add_argument(
        "--max-passes-per-input",
        type=int,
        default=None,
        help="most model passes per input the chosen prompt may cost at prediction time (default 1)",
    )
    fit.add_argument(
        "--templates",
        nargs="+",
        default=None,
        metavar="TEMPLATE",
        help="more templates auto mode may choose from, beside --template, within --budget (each with and without "
        "demonstrations: raise --budget to 2 x (1 + their count) to try them all)",
    )
    fit.add_argument(
        "--chat-template",
        choices=["on", "off", "auto"],
        default=None,
        help="wrap the prompt in the tokenizer's chat template (on), not (off, the default), or let auto mode try "
        "both within --budget (auto)",
    )
    fit.add_argument("--decoder-seed", type=int, default=0, help="seed of the decoder initialisation")
    fit.add_argument("--text-column", help="column of the first text (default: text, sentence, ...)")
    fit.add_argument("--text-pair-column", help="column of the second text, for {text_b} templates")
    fit.add_argument("--label-column", default="label")
    fit.add_argument("--cache-dir", help="keep extracted features here and reuse them")
    backbone(fit)
    remote(fit, fitting=True)

    ev = sub.add_parser("evaluate", help="accuracy of an adapter on labelled data")
    ev.add_argument("adapter", help="adapter folder")
    common(ev, "base model (default: the one in the adapter config)")
    data(ev, "test")
    backbone(ev)
    remote(ev, fitting=False)

    pr = sub.add_parser("predict", help="labels and probabilities for texts from a file or stdin")
    pr.add_argument("adapter", help="adapter folder")
    pr.add_argument("input", nargs="?", default="-", help="texts: .txt (one per line), .csv/.tsv/.jsonl, or - (stdin)")
    pr.add_argument(
        "--reject", nargs="?", const=True, type=float, default=None,
        help="answer the adapter's reject label (or '-') for out-of-scope texts: threshold chosen on held-out data "
        "for its reject_rate, or the number given (an unknown_score threshold)",
    )  # fmt: skip
    pr.add_argument("--alpha", type=float, help="also print each text's conformal prediction set at this miscoverage")
    pr.add_argument(
        "--output",
        help="write JSON Lines here (one record per input), streaming in batches with memory independent of the "
        "input's length; rerun the same command after an interruption to resume after the last complete line",
    )
    pr.add_argument("--batch-size", type=int, default=32, help="inputs per batch with --output (default 32)")
    pr.add_argument("--overwrite", action="store_true", help="with --output: start the output again, not resume")
    common(pr, "base model (default: the one in the adapter config)")
    backbone(pr)
    remote(pr, fitting=False)

    sg = sub.add_parser("suggest", help="which unlabelled texts to label next (active learning)")
    sg.add_argument("adapter", help="adapter folder")
    sg.add_argument("pool", help="unlabelled texts: .txt (one per line), .csv/.tsv/.jsonl, or - (stdin)")
    sg.add_argument("--k", type=int, default=20, help="how many texts to suggest (default 20)")
    sg.add_argument("--strategy", choices=["margin", "entropy", "diverse"], default="margin")
    common(sg, "base model (default: the one in the adapter config)")
    backbone(sg)
    remote(sg, fitting=False)

    push = sub.add_parser("push", help="upload an adapter folder to the Hugging Face Hub")
    push.add_argument("adapter", help="adapter folder")
    push.add_argument("repo_id", help="Hub repository id, e.g. user/dect-sst2")
    push.add_argument("--private", action="store_true")
    push.add_argument("--token", default=None, help="Hub token (default: the logged-in one)")
    push.add_argument("--json", action="store_true", help="machine-readable JSON output")

    serve = sub.add_parser("serve", help="serve adapters over HTTP (the Hugging Face Inference API's format)")
    serve.add_argument(
        "adapters", nargs="+", metavar="[NAME=]ADAPTER",
        help="adapter folders or Hub ids, all for one base model, served as /models/NAME (default NAME: the "
        "folder's name, or the Hub id with '--' for '/')",
    )  # fmt: skip
    common(serve, "base model (default: the one in the first adapter's config)")
    backbone(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--api-key", default=os.environ.get("PEFT_DECT_API_KEY"),
        help="bearer token every endpoint but /health and / requires (default: $PEFT_DECT_API_KEY; none if unset)",
    )  # fmt: skip
    serve.add_argument("--max-batch", type=int, default=64, help="texts per backbone batch (default 64)")
    serve.add_argument("--max-wait-ms", type=float, default=10.0, help="ms a request waits for others (default 10)")
    serve.add_argument("--max-queue", type=int, default=1024, help="texts queued before 503 (default 1024)")
    serve.add_argument("--no-batching", action="store_true", help="run every request on its own")
    serve.add_argument("--max-inputs", type=int, default=256, help="texts per request (default 256)")
    serve.add_argument("--max-body-bytes", type=int, default=1 << 20, help="request body limit (default 1 MiB)")
    serve.add_argument("--timeout", type=float, default=30.0, help="seconds per request (default 30)")
    serve.add_argument("--max-connections", type=int, help="open connections at most (503 beyond; default: none)")
    serve.add_argument(
        "--feature-cache-mb", type=float, default=256.0,
        help="memory for the features of texts seen (default 256; 0 keeps none)",
    )  # fmt: skip

    demo = sub.add_parser("demo", help="DecT on SST-2 16-shot with the embedded SmolLM2, offline")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if getattr(args, "quiet", False):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    from . import commands  # here, not at the top: `peft-dect --help` must not wait for torch and peft to load

    try:
        commands.run(args)
    except (ValueError, TypeError, ImportError, OSError) as err:
        print(f"peft-dect {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
