"""What the `peft-dect` commands do: fit, evaluate, predict with, push and serve DecT adapters, and run the demo.

`peft_dect.cli` parses the command line and calls `run(args)`; errors a user can fix are raised as ValueError,
TypeError, ImportError or OSError with a message naming the file, line or option.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
from pathlib import Path

import datasets
import torch
from peft import PeftConfig, PeftModel, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

from .data import PAIR_COLUMNS, TEXT_COLUMNS, read_labels, read_texts
from .dect import DecTConfig
from .demo import main as demo
from .embedded import load_smollm2, resolve_dtype, smollm2_gguf
from .hub import push_adapter_folder
from .introspect import lm_kind
from .io import check_text_values, read_columns, require_columns
from .llama_cpp_runner import check_gguf_file, import_llama_cpp
from .metrics import METRICS
from .prompting import Template
from .quantize import SMOOTH_ALPHA_PER_TOKEN, quantize_int8
from .remote import BlackBoxDecT, OpenAIEndpoint
from .remote.saved import REMOTE_FILE
from .smoothing import decoder_layers
from .stream import file_identity, predict_file
from .tasks import get_task, load_task, sample_k_shot
from .uncertainty import prediction_sets


EMBEDDED = "smollm2"
DEVICE = "cpu"  # where the command line runs an in-process model (where transformers loads it)


CHAT_CHOICES = {"on": True, "off": False, "auto": None}  # --chat-template -> DecTConfig(chat_template=...)


def _backbone(args) -> tuple[torch.dtype, Path | None]:
    """(--dtype, the GGUF file of --llama-cpp or None), checked before any model is loaded by the checks the Python
    API makes (`resolve_dtype`, `LlamaCppRunner`'s); --llama-cpp smollm2 is the embedded SmolLM2's GGUF file."""
    dtype = resolve_dtype(getattr(args, "dtype", None), DEVICE)
    gguf = getattr(args, "llama_cpp", None)
    if getattr(args, "int8", False) and (dtype != torch.float32 or gguf or torch.device(DEVICE).type != "cpu"):
        raise ValueError("--int8 quantises a float32 model on the CPU: drop --dtype or --llama-cpp (or --int8).")
    if not gguf:
        return dtype, None
    if gguf == EMBEDDED and not Path(gguf).exists():
        folder, name = smollm2_gguf()
        gguf = folder / name
    import_llama_cpp()
    return dtype, check_gguf_file(gguf).resolve()


def _use_llama_cpp(peft_model, gguf: Path | None) -> None:
    """Run the base model's body through llama.cpp from `gguf` (None: PyTorch), as `DecTModel.use_llama_cpp`."""
    if gguf is not None:
        peft_model.base_model.use_llama_cpp(gguf)


def _load_base(model: str | None, kind: str | None, dtype: torch.dtype = torch.float32, int8: bool = False):
    """(model, tokenizer): the embedded SmolLM2 for 'smollm2' (or its folder), else a transformers LM, in `dtype`;
    `int8`: its body's linear layers quantised as `quantize_int8` does per token (the same calibration every time;
    SmoothQuant where the model has Llama-style decoder layers, as the masked LMs have not)."""
    model, tokenizer = _load_float(model, kind, dtype)
    if int8:
        alpha = SMOOTH_ALPHA_PER_TOKEN if decoder_layers(model) else None
        model, _ = quantize_int8(model, tokenizer, activations="per_token", smooth_alpha=alpha)
    return model, tokenizer


def _load_float(model: str | None, kind: str | None, dtype: torch.dtype):
    if model in (None, EMBEDDED):
        return load_smollm2(dtype)
    try:
        if Path(model).resolve() == smollm2_gguf()[0].resolve():
            return load_smollm2(dtype)
    except ImportError:
        pass
    if kind is None:
        archs = " ".join(AutoConfig.from_pretrained(model).architectures or [])
        kind = "masked" if "MaskedLM" in archs else "causal" if ("CausalLM" in archs or "LMHead" in archs) else None
        if kind is None:
            raise ValueError(f"Cannot tell whether {model} is a masked or a causal LM; pass --kind masked|causal.")
    cls = AutoModelForMaskedLM if kind == "masked" else AutoModelForCausalLM
    return cls.from_pretrained(model, dtype=dtype).eval(), AutoTokenizer.from_pretrained(model)


def _file(args, split: str):
    """The columns of the data file of `split` (--train, --eval, --test), checked, or None."""
    path = getattr(args, split, None)
    if not path:
        return None
    columns = read_columns(path)
    text = getattr(args, "text_column", None) or next((c for c in TEXT_COLUMNS if c in columns), "text")
    require_columns(columns, path, [text, getattr(args, "label_column", None) or "label"])
    check_text_values(columns, path, [text, getattr(args, "text_pair_column", None)])
    return columns


def _k_shot(args) -> dict:
    """`fit --train FILE --k K --seed S`: K rows per class for training and K more as the eval split (as
    `peft_dect.tasks.sample_k_shot`), drawn once per command."""
    if "k_shot" not in vars(args):
        columns = _file(args, "train")
        label = args.label_column or "label"
        table = datasets.Dataset.from_dict({name: list(values) for name, values in columns.items()})
        split = sample_k_shot(table, args.k, args.seed, label_column=label)
        args.k_shot = {"train": split["train"].to_dict(), "eval": split["validation"].to_dict()}
    return args.k_shot


def _data(args, split: str):
    """A labelled dataset from --task (LM-BFF layout under --data), from a file, or a --k sample of --train."""
    path = getattr(args, split, None)
    sampled = split in ("train", "eval") and args.k is not None and getattr(args, "train", None) and not args.task
    if sampled and (split == "train" or not path):
        return _k_shot(args)[split]
    if path:
        return _file(args, split)
    if args.task:
        data = load_task(args.task, args.data, k=args.k or 16, seed=args.seed)
        name = {"train": "train", "eval": "validation", "test": "test"}[split]
        if name not in data:
            raise ValueError(f"Task {args.task} has no {name} split in {args.data}.")
        return data[name]
    return None


ROW = re.compile(r"Row (\d+) ")


@contextlib.contextmanager
def _located(path: str, columns):
    """Errors that name a row of a file's columns name the file and line instead (as the reader's own do)."""
    try:
        yield
    except (ValueError, TypeError) as err:
        match, lines = ROW.match(str(err)), getattr(columns, "lines", None)
        if match is None or lines is None or int(match[1]) >= len(lines):
            raise
        raise type(err)(f"{path}:{lines[int(match[1])]}: {err}") from None


def _check_labels(args, config, splits: tuple[str, ...]) -> None:
    """Read the labels of the data files of `splits` once before any model pass, so a bad label names its line."""
    for split in splits:
        path = getattr(args, split, None)
        if path:
            columns = _file(args, split)
            with _located(path, columns):
                if config.multi_label:
                    config.read_labels(columns, warn_missing=False)
                else:
                    read_labels(columns, config.classes, config.label_column, warn_missing=False)


def _label_words(text: str | None) -> dict | None:
    """JSON ('{"neg": ["bad"], "pos": ["great"]}') or 'neg=bad|awful,pos=great'."""
    if text is None:
        return None
    if text.lstrip().startswith("{"):
        try:
            words = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"--label-words is not valid JSON ({err.msg} at character {err.pos}); give an object such as "
                '\'{"negative": ["bad"], "positive": ["great"]}\' or the form negative=bad,positive=great.'
            ) from None
        if not isinstance(words, dict):
            raise ValueError(f"--label-words must be a JSON object of class -> words, got {type(words).__name__}.")
        return words
    out = {}
    for part in text.split(","):
        if "=" not in part:
            raise ValueError(f"--label-words: expected class=word[|word...], got {part!r}.")
        name, words = part.split("=", 1)
        out[name.strip()] = [w.strip() for w in words.split("|")]
    return out


def _names(args, spec) -> list[str]:
    """`--label-words names`: the task's classes, or the labels of --train in sorted order, as words."""
    if spec is not None:
        return spec.classes
    labels = _file(args, "train")[args.label_column or "label"]
    names = sorted({str(v) for v in labels})
    if all(v.lstrip("-").isdigit() for v in names):
        raise ValueError(
            "--label-words names needs class names in the label column, but --train's labels are numbers; give "
            "the words instead (--label-words 'negative=bad,positive=great')."
        )
    return names


def _emit(args, payload: dict, human: str) -> None:
    print(json.dumps(payload) if args.json else human)


def _endpoint(args, **overrides):
    """The OpenAI-compatible endpoint of --endpoint/--model, with the request options of the command line."""
    if not args.model:
        raise ValueError("--endpoint needs --model: the name the server serves the model under.")
    options = {
        "embeddings": not getattr(args, "no_embeddings", False),
        "top_logprobs": getattr(args, "top_logprobs", None) or 20,
        "max_concurrency": args.concurrency or 4,
        "batch_size": _prompts_per_request(args),
        "cache_file": args.request_cache,
        "show_progress": not args.quiet,
    }
    return OpenAIEndpoint(args.endpoint, args.model, **(options | overrides))


def _prompts_per_request(args) -> int | str:
    """--prompts-per-request: a positive number (default 1) or 'auto'."""
    value = getattr(args, "prompts_per_request", None) or "1"
    if value == "auto":
        return value
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"--prompts-per-request must be 'auto' or a number >= 1, got {value!r}.")
    return int(value)


REMOTE_ONLY = (
    "concurrency",
    "request_cache",
    "top_logprobs",
    "no_embeddings",
    "missing_label_words",
    "prompts_per_request",
)
LOCAL_ONLY = ("cache_dir", "kind", "dtype", "llama_cpp", "int8")


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


def _fit_and_save(args, classifier, train, **fit_options) -> dict:
    """Fit, save to --out and return the report without auto mode's grid (too long to print)."""
    report = classifier.fit(train, eval_dataset=_data(args, "eval"), **fit_options)
    classifier.save_pretrained(args.out)
    return {k: v for k, v in report.items() if k != "grid"} | {"adapter": str(args.out)}


def _metric(args, spec) -> str | None:
    """What auto mode maximises: --metric, else the task's classification metric (F1 for MRPC, MCC for CoLA)."""
    if args.metric:
        return args.metric
    return spec.metric if spec is not None and spec.metric in METRICS and spec.metric != "accuracy" else None


def _fit_remote(args, train, config, metric) -> None:
    clf = BlackBoxDecT(config, _endpoint(args), missing_label_words=args.missing_label_words or "exact")
    report = _fit_and_save(args, clf, train, metric=metric)
    _emit(
        args,
        report,
        f"Saved the black-box DecT adapter to {args.out}: {report['requests']} requests to {args.endpoint} "
        f"({report['completion_requests']} completions, of which {report['label_word_requests']} for label words "
        f"outside the top candidates; {report['embedding_requests']} embedding), {report['prompt_tokens']} prompt "
        f"tokens, {report['wall_seconds']:.1f} s; mode {report['mode']}, lam={report['lam']:g}.",
    )


def cmd_fit(args) -> None:
    _check_options(args)
    dtype, gguf = (None, None) if args.endpoint else _backbone(args)
    train = _data(args, "train")
    if train is None:
        raise ValueError("Give the training data: --train FILE or --task NAME (with --data DIR).")
    spec = get_task(args.task) if args.task else None
    if args.endpoint:
        model = tokenizer = None
        kind = "causal"  # an OpenAI-compatible server continues the prompt: causal-LM templates
    else:
        model, tokenizer = _load_base(args.model, args.kind, dtype, getattr(args, "int8", False))
        kind = lm_kind(model)
    template = args.template or (spec.template_for(kind) if spec else None)
    words = _names(args, spec) if args.label_words == "names" else _label_words(args.label_words)
    words = words or (spec.label_words if spec else None)
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
        multi_label=args.multi_label,
        **{
            k: getattr(args, k)
            for k in ("budget", "max_passes_per_input", "templates")
            if getattr(args, k, None) is not None
        },
        **({"chat_template": CHAT_CHOICES[args.chat_template]} if getattr(args, "chat_template", None) else {}),
    )
    _check_labels(args, config, ("train", "eval"))
    if args.endpoint:
        _fit_remote(args, train, config, _metric(args, spec))
        return
    options = {"tokenizer": tokenizer, "cache_dir": args.cache_dir, "show_progress": not args.quiet}
    options["metric"] = _metric(args, spec)
    peft_model = get_peft_model(model, config)
    _use_llama_cpp(peft_model, gguf)
    report = _fit_and_save(args, peft_model, train, **options)
    _emit(
        args,
        report,
        f"Saved the DecT adapter to {args.out} ({report['model_passes']} model passes, "
        f"{report['feature_seconds']:.1f} s features + {report['decoder_seconds']:.2f} s decoder; "
        f"mode {report['mode']}, lam={report['lam']:g}, calibrate={report['calibrate']}).",
    )


def _load_adapter(args):
    """A PeftModel with its DecT adapter, or a `BlackBoxDecT` for an adapter fitted through a server."""
    if _is_remote_folder(args.adapter):
        given = [name for name in LOCAL_ONLY if getattr(args, name, None)]
        if given:
            raise ValueError(
                f"--{given[0].replace('_', '-')} applies to an in-process model, not to an adapter fitted through a "
                "server."
            )
        overrides = {"url": args.endpoint} if args.endpoint else {}
        if args.model:
            overrides["model"] = args.model
        overrides |= {"max_concurrency": args.concurrency or 4, "cache_file": args.request_cache}
        overrides["batch_size"] = _prompts_per_request(args)
        return BlackBoxDecT.from_pretrained(args.adapter, show_progress=not args.quiet, **overrides)
    remote_options = ("endpoint", "concurrency", "request_cache", "prompts_per_request")
    given = [name for name in remote_options if getattr(args, name, None)]
    if given:
        raise ValueError(
            f"--{given[0].replace('_', '-')} applies to adapters fitted through a server (peft-dect fit --endpoint); "
            f"{args.adapter} is an in-process adapter."
        )

    dtype, gguf = _backbone(args)
    config = PeftConfig.from_pretrained(args.adapter)
    model, tokenizer = _load_base(
        args.model or config.base_model_name_or_path, args.kind, dtype, getattr(args, "int8", False)
    )
    peft_model = PeftModel.from_pretrained(model, args.adapter)
    peft_model.base_model.set_tokenizer(tokenizer)
    _use_llama_cpp(peft_model, gguf)
    return peft_model


def cmd_evaluate(args) -> None:
    test = _data(args, "test")
    if test is None:
        raise ValueError("Give the evaluation data: --test FILE or --task NAME (with --data DIR).")
    peft_model = _load_adapter(args)
    _check_labels(args, peft_model.config if _is_remote(peft_model) else peft_model.active_peft_config, ("test",))
    progress = {} if _is_remote(peft_model) else {"show_progress": not args.quiet}
    metrics = peft_model.evaluate(test, **progress)
    _emit(args, metrics, "  ".join(f"{k} {100 * v:.1f}" for k, v in metrics.items()))


def _adapter_identity(folder: str) -> dict:
    """What names an adapter for a resumable output: its folder and the SHA-256 of each file in it."""
    root = Path(folder).resolve()
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    return {"adapter": str(root), "files": {str(p.relative_to(root)): file_identity(p)["sha256"] for p in files}}


def _model_identity(args) -> dict:
    """What names the model of a resumable output beside the adapter: --model, --dtype, --llama-cpp and --int8 if given
    (the default float32 PyTorch model adds nothing, so outputs written before these options resume)."""
    identity = {"model": args.model} if args.model else {}
    if _is_remote_folder(args.adapter):
        return identity
    dtype, gguf = _backbone(args)
    if dtype != torch.float32:
        identity["dtype"] = str(dtype).removeprefix("torch.")
    if getattr(args, "int8", False):
        identity["int8"] = "per_token"
    return identity | ({"llama_cpp": str(gguf)} if gguf is not None else {})


def _predict_to_file(args, peft_model) -> None:
    """`predict --output FILE`: streamed, flushed per batch, resumed after an interruption."""
    if args.input == "-":
        raise ValueError("--output needs an input file (it resumes by the file's identity), not standard input.")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}.")
    remote = _is_remote(peft_model)
    clf = peft_model if remote else peft_model.base_model
    summary = predict_file(
        clf,
        args.input,
        args.output,
        batch_size=args.batch_size,
        reject=False if args.reject is None else args.reject,
        alpha=args.alpha,
        identity=_model_identity(args) | _adapter_identity(args.adapter),  # first: shown in a refusal's 300 chars
        overwrite=args.overwrite,
        show_progress=not args.quiet,
    )
    resumed = f", resumed after {summary['resumed_from']}" if summary["resumed_from"] else ""
    _emit(
        args, summary, f"Wrote {summary['written']} predictions to {args.output}{resumed} ({summary['total']} in all)."
    )


def cmd_predict(args) -> None:
    given = [name for name in ("overwrite",) if getattr(args, name, False)]
    if given and not args.output:
        raise ValueError("--overwrite applies with --output FILE only.")
    peft_model = _load_adapter(args)
    if args.output:
        _predict_to_file(args, peft_model)
        return
    remote = _is_remote(peft_model)
    cfg = peft_model.config if remote else peft_model.active_peft_config
    columns = read_columns(args.input)
    pair = Template(cfg.template).is_pair
    guessed = [
        cfg.text_column or next((c for c in TEXT_COLUMNS if c in columns), None),
        (cfg.text_pair_column or next((c for c in PAIR_COLUMNS if c in columns), None)) if pair else None,
    ]
    check_text_values(columns, "standard input" if args.input == "-" else args.input, guessed)
    texts, _ = read_texts(
        columns,
        needs_pair=pair,
        text_column=cfg.text_column,
        text_pair_column=cfg.text_pair_column,
    )
    clf = peft_model if remote else peft_model.base_model
    logits = clf.checked_logits(columns, **({} if remote else {"show_progress": not args.quiet}))
    probs = clf.probabilities_of(logits).numpy()
    labels = clf.decide(logits)
    classes = cfg.classes
    extra: dict[str, list] = {}
    if args.reject is not None:
        labels, extra["unknown_score"] = clf.decide_or_reject(logits, args.reject)
    if args.alpha is not None:
        threshold = clf.calibration_or_error("A prediction set").set_threshold(args.alpha)
        extra["set"] = [[classes[c] for c in row] for row in prediction_sets(torch.as_tensor(probs), threshold)]
    if not args.json:
        print("\t".join(["label", *classes, *extra]))
    for i, (text, label, row) in enumerate(zip(texts, labels, probs)):
        if args.json:
            record = {"text": text, "label": label, "probabilities": dict(zip(classes, map(float, row)))}
            print(json.dumps(record | {k: v[i] for k, v in extra.items()}))
        else:
            shown = [f"{v[i]:.4f}" if k == "unknown_score" else "|".join(v[i]) for k, v in extra.items()]
            label = "|".join(label) if isinstance(label, list) else label  # a multi-label adapter's set
            print("\t".join(["-" if label is None else label, *(f"{p:.4f}" for p in row), *shown]))


def cmd_suggest(args) -> None:
    peft_model = _load_adapter(args)
    remote = _is_remote(peft_model)
    clf = peft_model if remote else peft_model.base_model
    columns = read_columns(args.pool)
    texts, _ = clf.read_inputs(columns)
    progress = {} if remote else {"show_progress": not args.quiet}
    chosen = clf.suggest(columns, args.k, strategy=args.strategy, **progress)
    if args.json:
        print(json.dumps({"indices": chosen, "texts": [texts[i] for i in chosen]}))
        return
    for i in chosen:
        print(f"{i}\t{texts[i]}")


def _is_remote(model) -> bool:
    return isinstance(model, BlackBoxDecT)


def _is_remote_folder(adapter: str) -> bool:
    """Whether the adapter folder holds an adapter fitted through a server (`BlackBoxDecT`)."""
    return (Path(adapter) / REMOTE_FILE).is_file()


def cmd_push(args) -> None:
    url = push_adapter_folder(args.adapter, args.repo_id, private=args.private, token=args.token)
    _emit(args, {"repo_id": args.repo_id, "url": url}, f"Pushed {args.adapter} to {url}")


def cmd_demo(args) -> None:
    demo(["--quiet"] if args.quiet else [])


def _adapter_sources(specs: list[str]) -> list[tuple[str | None, str]]:
    """(name or None, source) of each `[NAME=]ADAPTER` of `peft-dect serve`."""
    out = []
    for spec in specs:
        name, sep, source = spec.partition("=")
        out.append((name, source) if sep and not Path(spec).exists() else (None, spec))
    return out


def cmd_serve(args) -> None:
    try:
        from .serving import AdapterRegistry, ServeSettings, run_server  # FastAPI, uvicorn: the optional serve extra
    except ImportError as err:
        raise ImportError(
            f"peft-dect serve needs FastAPI and uvicorn ({err}): pip install 'peft-dect[serve]'."
        ) from err
    settings = ServeSettings(
        api_key=args.api_key or None,
        max_body_bytes=args.max_body_bytes,
        max_inputs=args.max_inputs,
        timeout=args.timeout,
        max_batch=args.max_batch,
        max_wait=args.max_wait_ms / 1000,
        max_queue=args.max_queue,
        batching=not args.no_batching,
    )
    dtype, gguf = _backbone(args)
    sources = _adapter_sources(args.adapters)
    base = args.model or PeftConfig.from_pretrained(sources[0][1]).base_model_name_or_path
    model, tokenizer = _load_base(base, args.kind, dtype, getattr(args, "int8", False))
    if args.feature_cache_mb < 0:
        raise ValueError(f"--feature-cache-mb must be 0 or more, got {args.feature_cache_mb}.")
    registry = AdapterRegistry(model, tokenizer, cache_max_bytes=max(1, int(args.feature_cache_mb * 2**20)))
    for name, source in sources:
        try:
            registry.add(source, name)
        except (ValueError, TypeError, KeyError, OSError) as err:  # one bad adapter does not stop the others
            print(f"peft-dect serve: {source} was not loaded: {err}", file=sys.stderr)
    if not registry.names:
        raise ValueError("No adapter could be loaded; nothing to serve.")
    if gguf is not None:
        _use_llama_cpp(registry.peft_model, gguf)
        for name in registry.names:  # an adapter llama.cpp cannot run is refused now, not at its first request
            try:
                registry.peft_model.base_model.backbone(adapter_name=name)
            except ValueError as err:
                raise ValueError(f"Adapter {name!r} cannot run with --llama-cpp: {err}") from None
    if not args.quiet:
        print(f"Serving {', '.join(registry.names)} on http://{args.host}:{args.port}/", file=sys.stderr)
    run_server(registry, settings, host=args.host, port=args.port, max_connections=args.max_connections)


def run(args) -> None:
    """Run the parsed command `args.command`."""
    COMMANDS[args.command](args)


COMMANDS = {
    "fit": cmd_fit,
    "evaluate": cmd_evaluate,
    "predict": cmd_predict,
    "suggest": cmd_suggest,
    "push": cmd_push,
    "demo": cmd_demo,
    "serve": cmd_serve,
}
