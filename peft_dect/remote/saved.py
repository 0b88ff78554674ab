"""A saved black-box adapter's endpoint file: what it may say about the server, and how it is read back safely.

`remote_endpoint.json` sits beside the adapter's config and decoder. It names the server and the model only
(`SAVED_SETTINGS`), never a key or a path on your disk, so that a shared adapter can neither choose where your key
goes nor where a file is written.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from ..cards import RunRecord


REMOTE_FILE = "remote_endpoint.json"
# What a saved adapter may say about its endpoint: the server and the model, never a key or a path on your disk.
SAVED_SETTINGS = ("url", "model", "embeddings", "top_logprobs", "embedding_url", "embedding_model")

logger = logging.getLogger(__name__)


def write_endpoint_file(folder: str | os.PathLike, endpoint_settings: dict, settings: dict) -> None:
    """Write `remote_endpoint.json` into `folder`: the endpoint's settings (no API key) and the adapter's others."""
    with open(os.path.join(folder, REMOTE_FILE), "w", encoding="utf-8") as f:
        json.dump({"endpoint": endpoint_settings, **settings}, f, indent=2)


def read_endpoint_file(folder: str | os.PathLike) -> dict:
    """The saved settings of the adapter in `folder`; a missing or malformed file is a ValueError naming it."""
    folder = Path(folder)
    try:
        saved = json.loads((folder / REMOTE_FILE).read_text(encoding="utf-8"))
        settings = saved["endpoint"]
        if not isinstance(settings, dict):
            raise TypeError(f"'endpoint' is a {type(settings).__name__}, not an object")
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(
            f"{folder} is not a saved black-box DecT adapter ({REMOTE_FILE} missing or unreadable: {err}); "
            "save one with BlackBoxDecT.save_pretrained."
        ) from None
    return saved


def saved_run_record(saved: dict, fresh: RunRecord) -> RunRecord:
    """The run record in the saved settings; a file saved before run records kept the fit report and evaluations at
    its top level, read over `fresh` (the record a new adapter of the same config starts with)."""
    if "record" in saved:
        return RunRecord.from_dict(saved["record"])
    return RunRecord.from_dict({**fresh.as_dict(), **saved, "fit": saved.get("fit") or {}})


def endpoint_arguments(settings: dict, given: dict, source: Path) -> dict:
    """OpenAIEndpoint arguments from an adapter's saved settings and the caller's: only the server and model come
    from the file, and the environment's API key goes only to URLs the caller gave."""
    ignored = sorted(set(settings) - set(SAVED_SETTINGS))
    if ignored:
        logger.warning(
            "Ignoring %s in %s: a saved adapter names its server and model only; keys and cache files come from you "
            "(api_key=..., cache_file=...).",
            ", ".join(ignored),
            source,
        )
    out = {k: v for k, v in settings.items() if k in SAVED_SETTINGS} | given
    saved_urls = [settings[k] for k in ("url", "embedding_url") if k in settings and k not in given]
    if given.get("api_key") is None and saved_urls and os.environ.get("OPENAI_API_KEY"):
        out["api_key"] = ""
        logger.warning(
            "OPENAI_API_KEY is not sent to %s, the URL saved in the adapter: pass url=... (--endpoint) or "
            "api_key=... to send a key to it.",
            " and ".join(sorted({str(u) for u in saved_urls})),
        )
    return out
