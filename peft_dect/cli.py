"""The `peft-dect` command: fit, evaluate, predict with and push DecT adapters, and run the demo."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from pathlib import Path


EMBEDDED = "smollm2"


def _load_base(model: str | None, kind: str | None):
    """(model, tokenizer): the embedded SmolLM2 for 'smollm2' (or its folder), else a transformers LM."""
    from .embedded import load_smollm2, smollm2_gguf

    if model in (None, EMBEDDED):
        return load_smollm2()
    try:
        if Path(model).resolve() == smollm2_gguf()[0].resolve():
            return load_smollm2()
    except ImportError:
        pass
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    if kind is None:
        archs = " ".join(AutoConfig.from_pretrained(model).architectures or [])
        kind = "masked" if "MaskedLM" in archs else "causal" if ("CausalLM" in archs or "LMHead" in archs) else None
        if kind is None:
            raise ValueError(f"Cannot tell whether {model} is a masked or a causal LM; pass --kind masked|causal.")
    cls = AutoModelForMaskedLM if kind == "masked" else AutoModelForCausalLM
    return cls.from_pretrained(model).eval(), AutoTokenizer.from_pretrained(model)


def _data(args, split: str):
    """A labelled dataset from --task (LM-BFF layout under --data) or from a file."""
    from .data import TEXT_COLUMNS
    from .io import read_columns, require_columns
    from .tasks import load_task

    path = getattr(args, split, None)
    if path:
        columns = read_columns(path)
        text = getattr(args, "text_column", None) or next((c for c in TEXT_COLUMNS if c in columns), "text")
        require_columns(columns, path, [text, getattr(args, "label_column", None) or "label"])
        return columns
    if args.task:
        data = load_task(args.task, args.data, k=args.k, seed=args.seed)
        name = {"train": "train", "eval": "validation", "test": "test"}[split]
        if name not in data:
            raise ValueError(f"Task {args.task} has no {name} split in {args.data}.")
        return data[name]
    return None


def _label_words(text: str | None) -> dict | None:
    """JSON ('{"neg": ["bad"], "pos": ["great"]}') or 'neg=bad|awful,pos=great'."""
    if text is None:
        return None
    if text.lstrip().startswith("{"):
        return json.loads(text)
    out = {}
    for part in text.split(","):
        if "=" not in part:
            raise ValueError(f"--label-words: expected class=word[|word...], got {part!r}.")
        name, words = part.split("=", 1)
        out[name.strip()] = [w.strip() for w in words.split("|")]
    return out


def _emit(args, payload: dict, human: str) -> None:
    print(json.dumps(payload) if args.json else human)


def _endpoint(args, **overrides):
    """The OpenAI-compatible endpoint of --endpoint/--model, with the request options of the command line."""
    from .remote import OpenAIEndpoint

    if not args.model:
        raise ValueError("--endpoint needs --model: the name the server serves the model under.")
    options = {
        "embeddings": not getattr(args, "no_embeddings", False),
        "top_logprobs": getattr(args, "top_logprobs", None) or 20,
        "max_concurrency": args.concurrency or 4,
        "cache_file": args.request_cache,
        "show_progress": not args.quiet,
    }
    return OpenAIEndpoint(args.endpoint, args.model, **(options | overrides))


REMOTE_ONLY = ("concurrency", "request_cache", "top_logprobs", "no_embeddings", "missing_label_words")
LOCAL_ONLY = ("cache_dir", "kind")


def _check_options(args) -> None:
    """`fit`: refuse options that do not apply (request options without --endpoint, model options with it)."""
    given = [name for name in REMOTE_ONLY if getattr(args, name, None)]
    if given and not args.endpoint:
        raise ValueError(
            f"--{given[0].replace('_', '-')} applies to a model behind --endpoint only; add --endpoint URL or drop it."
        )
    wrong = [name for name in LOCAL_ONLY if getattr(args, name, None)] if args.endpoint else []
    if wrong:
        raise ValueError(f"--{wrong[0].replace('_', '-')} applies to an in-process model, not to --endpoint; drop it.")


def _fit_remote(args, train, config) -> None:
    from .remote import BlackBoxDecT

    clf = BlackBoxDecT(config, _endpoint(args), missing_label_words=args.missing_label_words or "exact")
    report = clf.fit(train, _data(args, "eval"))
    clf.save_pretrained(args.out)
    report = {k: v for k, v in report.items() if k != "grid"} | {"adapter": str(args.out)}
    _emit(
        args,
        report,
        f"Saved the black-box DecT adapter to {args.out}: {report['requests']} requests to {args.endpoint} "
        f"({report['completion_requests']} completions, of which {report['label_word_requests']} for label words "
        f"outside the top candidates; {report['embedding_requests']} embedding), {report['prompt_tokens']} prompt "
        f"tokens, {report['wall_seconds']:.1f} s; mode {report['mode']}, lam={report['lam']:g}.",
    )


def cmd_fit(args) -> None:
    from peft import get_peft_model

    from .dect import DecTConfig
    from .tasks import get_task

    train = _data(args, "train")
    if train is None:
        raise ValueError("Give the training data: --train FILE or --task NAME (with --data DIR).")
    spec = get_task(args.task) if args.task else None
    _check_options(args)
    if args.endpoint:
        model = tokenizer = None
        kind = "causal"  # an OpenAI-compatible server continues the prompt: causal-LM templates
    else:
        from .backbone import lm_kind

        model, tokenizer = _load_base(args.model, args.kind)
        kind = lm_kind(model)
    template = args.template or (spec.template_for(kind) if spec else None)
    words = _label_words(args.label_words) or (spec.label_words if spec else None)
    if template is None or words is None:
        raise ValueError("Give --template and --label-words (or --task for its defaults).")
    config = DecTConfig(
        template=template,
        label_words=words,
        mode=args.mode,
        lam=args.lam,
        seed=args.decoder_seed,
        text_column=args.text_column or ("text_a" if spec else None),
        text_pair_column=args.text_pair_column or ("text_b" if spec else None),
        label_column=args.label_column,
    )
    if args.endpoint:
        _fit_remote(args, train, config)
        return
    peft_model = get_peft_model(model, config)
    report = peft_model.fit(
        train, tokenizer, _data(args, "eval"), cache_dir=args.cache_dir, show_progress=not args.quiet
    )
    peft_model.save_pretrained(args.out)
    report = {k: v for k, v in report.items() if k != "grid"} | {"adapter": str(args.out)}
    _emit(
        args,
        report,
        f"Saved the DecT adapter to {args.out} ({report['model_passes']} model passes, "
        f"{report['feature_seconds']:.1f} s features + {report['decoder_seconds']:.2f} s decoder; "
        f"mode {report['mode']}, lam={report['lam']:g}, calibrate={report['calibrate']}).",
    )


def _load_adapter(args):
    """A PeftModel with its DecT adapter, or a `BlackBoxDecT` for an adapter fitted through a server."""
    from peft import PeftConfig, PeftModel

    from .remote.dect import REMOTE_FILE, BlackBoxDecT

    if (Path(args.adapter) / REMOTE_FILE).is_file():
        if args.kind:
            raise ValueError("--kind applies to an in-process model, not to an adapter fitted through a server.")
        overrides = {"url": args.endpoint} if args.endpoint else {}
        if args.model:
            overrides["model"] = args.model
        overrides |= {"max_concurrency": args.concurrency or 4, "cache_file": args.request_cache}
        return BlackBoxDecT.from_pretrained(args.adapter, show_progress=not args.quiet, **overrides)
    given = [name for name in ("endpoint", "concurrency", "request_cache") if getattr(args, name, None)]
    if given:
        raise ValueError(
            f"--{given[0].replace('_', '-')} applies to adapters fitted through a server (peft-dect fit --endpoint); "
            f"{args.adapter} is an in-process adapter."
        )

    config = PeftConfig.from_pretrained(args.adapter)
    model, tokenizer = _load_base(args.model or config.base_model_name_or_path, args.kind)
    peft_model = PeftModel.from_pretrained(model, args.adapter)
    peft_model.base_model.set_tokenizer(tokenizer)
    return peft_model


def cmd_evaluate(args) -> None:
    test = _data(args, "test")
    if test is None:
        raise ValueError("Give the evaluation data: --test FILE or --task NAME (with --data DIR).")
    peft_model = _load_adapter(args)
    progress = {} if _is_remote(peft_model) else {"show_progress": not args.quiet}
    metrics = peft_model.evaluate(test, **progress)
    _emit(args, metrics, "  ".join(f"{k} {100 * v:.1f}" for k, v in metrics.items()))


def cmd_predict(args) -> None:
    from .data import read_texts
    from .io import read_columns
    from .prompting import Template

    peft_model = _load_adapter(args)
    remote = _is_remote(peft_model)
    cfg = peft_model.config if remote else peft_model.active_peft_config
    columns = read_columns(args.input)
    texts, _ = read_texts(
        columns,
        needs_pair=Template(cfg.template).is_pair,
        text_column=cfg.text_column,
        text_pair_column=cfg.text_pair_column,
    )
    probs = peft_model.predict_proba(columns, **({} if remote else {"show_progress": not args.quiet}))
    classes = cfg.classes
    if not args.json:
        print("\t".join(["label", *classes]))
    for text, row in zip(texts, probs):
        label = classes[int(row.argmax())]
        if args.json:
            print(json.dumps({"text": text, "label": label, "probabilities": dict(zip(classes, map(float, row)))}))
        else:
            print("\t".join([label, *(f"{p:.4f}" for p in row)]))


def _is_remote(model) -> bool:
    from .remote import BlackBoxDecT

    return isinstance(model, BlackBoxDecT)


def cmd_push(args) -> None:
    from .hub import push_adapter_folder

    url = push_adapter_folder(args.adapter, args.repo_id, private=args.private, token=args.token)
    _emit(args, {"repo_id": args.repo_id, "url": url}, f"Pushed {args.adapter} to {url}")


def cmd_demo(args) -> None:
    from .demo import main as demo

    demo(["--quiet"] if args.quiet else [])


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

    def remote(p, fitting: bool):
        p.add_argument(
            "--endpoint",
            help="base URL of an OpenAI-compatible server (llama.cpp, vLLM) to reach the model through"
            + ("" if fitting else "; default: the one the adapter was fitted with"),
        )
        p.add_argument("--concurrency", type=int, help="requests in flight at once (with --endpoint; default 4)")
        p.add_argument("--request-cache", help="JSON-lines file of server answers, so no prompt is sent twice")
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
        p.add_argument("--k", type=int, default=16, help="shots of the task split (with --task)")
        p.add_argument("--seed", type=int, default=13, help="data seed of the task split (with --task)")
        p.add_argument(f"--{split}", help=f"{split} data file: .csv or .tsv with a header, or .jsonl")

    fit = sub.add_parser("fit", help="fit a DecT adapter and save it")
    common(
        fit, "base model: 'smollm2' (embedded, default), a local folder or a Hub id; with --endpoint the served name"
    )
    data(fit, "train")
    fit.add_argument("--eval", help="eval data file for auto mode's choice (default with --task: its dev split)")
    fit.add_argument("--out", required=True, help="folder to save the adapter to")
    fit.add_argument("--template", help="prompt, e.g. '{text_a} In summary, it was {mask}'")
    fit.add_argument("--label-words", help="'neg=bad,pos=great|good' or a JSON object")
    fit.add_argument("--mode", choices=["auto", "faithful"], default="auto")
    fit.add_argument("--lam", type=float, default=None, help="fusion weight (faithful mode); default 1/shots")
    fit.add_argument("--decoder-seed", type=int, default=0, help="seed of the decoder initialisation")
    fit.add_argument("--text-column", help="column of the first text (default: text, sentence, ...)")
    fit.add_argument("--text-pair-column", help="column of the second text, for {text_b} templates")
    fit.add_argument("--label-column", default="label")
    fit.add_argument("--cache-dir", help="keep extracted features here and reuse them")
    remote(fit, fitting=True)
    fit.set_defaults(func=cmd_fit)

    ev = sub.add_parser("evaluate", help="accuracy of an adapter on labelled data")
    ev.add_argument("adapter", help="adapter folder")
    common(ev, "base model (default: the one in the adapter config)")
    data(ev, "test")
    remote(ev, fitting=False)
    ev.set_defaults(func=cmd_evaluate)

    pr = sub.add_parser("predict", help="labels and probabilities for texts from a file or stdin")
    pr.add_argument("adapter", help="adapter folder")
    pr.add_argument("input", nargs="?", default="-", help="texts: .txt (one per line), .csv/.tsv/.jsonl, or - (stdin)")
    common(pr, "base model (default: the one in the adapter config)")
    remote(pr, fitting=False)
    pr.set_defaults(func=cmd_predict)

    push = sub.add_parser("push", help="upload an adapter folder to the Hugging Face Hub")
    push.add_argument("adapter", help="adapter folder")
    push.add_argument("repo_id", help="Hub repository id, e.g. user/dect-sst2")
    push.add_argument("--private", action="store_true")
    push.add_argument("--token", default=None, help="Hub token (default: the logged-in one)")
    push.add_argument("--json", action="store_true", help="machine-readable JSON output")
    push.set_defaults(func=cmd_push)

    demo = sub.add_parser("demo", help="DecT on SST-2 16-shot with the embedded SmolLM2, offline")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if getattr(args, "quiet", False):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    import peft_dect  # noqa: F401  (registers DecT with peft)

    try:
        args.func(args)
    except (ValueError, TypeError, ImportError, OSError) as err:
        print(f"peft-dect {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
