"""The Hugging Face Hub: checks before anything is uploaded, one atomic commit, and safetensors-only downloads."""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError
from huggingface_hub.utils import HFValidationError, validate_repo_id

from .saving import CONFIG_FILE, WEIGHTS_FILE


REQUIRED_FILES = (CONFIG_FILE, WEIGHTS_FILE)


def check_repo_id(repo_id: str) -> None:
    """Raise a ValueError naming the rule if `repo_id` is not a valid Hub repository id."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ValueError(f"{repo_id!r} is not a valid Hub repository id ({err}); use 'user/name'.") from None
    if "/" not in repo_id:
        raise ValueError(f"{repo_id!r} is not a valid Hub repository id: give it as 'user/name' or 'org/name'.")


def push_adapter_folder(folder, repo_id: str, *, private: bool = False, token: str | None = None, api=None) -> str:
    """Upload a saved adapter folder as one commit (all files or none) and return the repository URL."""
    check_repo_id(repo_id)
    folder = Path(folder)
    links = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_symlink())
    if links:
        raise ValueError(
            f"{folder} holds symbolic links ({', '.join(links[:3])}); the upload would send the files they point to. "
            "Replace them with plain files or remove them; nothing was uploaded."
        )
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise ValueError(f"{folder} is not a saved adapter ({', '.join(missing)} missing); use save_pretrained.")
    api = api or HfApi(token=token)
    try:
        api.whoami()
    except Exception as err:  # no token, or a token the Hub refuses: nothing has been uploaded yet
        raise ValueError(
            f"Cannot push to {repo_id}: not logged in to the Hugging Face Hub ({type(err).__name__}). "
            "Run `hf auth login` or pass a token; nothing was uploaded."
        ) from None
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    api.upload_folder(
        folder_path=str(folder), repo_id=repo_id, repo_type="model", commit_message="Upload DecT adapter (peft-dect)"
    )
    return f"https://huggingface.co/{repo_id}"


def hub_adapter_folder(repo_id: str, kwargs: dict, optional: tuple[str, ...] = ()) -> str:
    """Download (or find in the cache) a Hub adapter's config and safetensors weights; return their folder.

    `optional` files (e.g. a demonstration pool) are fetched when the repository has them. peft itself would fall
    back to a pickled adapter_model.bin when a repository has no safetensors file; this never does.
    """
    options = {k: kwargs[k] for k in ("revision", "token", "cache_dir") if kwargs.get(k) is not None}
    subfolder = kwargs.get("subfolder") or None
    try:
        hf_hub_download(repo_id, CONFIG_FILE, subfolder=subfolder, **options)
        weights = hf_hub_download(repo_id, WEIGHTS_FILE, subfolder=subfolder, **options)
    except EntryNotFoundError:  # also the offline cache miss (LocalEntryNotFoundError)
        raise ValueError(
            f"{repo_id} has no {CONFIG_FILE} and {WEIGHTS_FILE} on the Hub (or in the local cache); "
            "peft-dect loads safetensors adapters only and never unpickles adapter_model.bin."
        ) from None
    for name in optional:
        try:
            hf_hub_download(repo_id, name, subfolder=subfolder, **options)
        except EntryNotFoundError:
            pass
    return os.path.dirname(weights)


def local_adapter_folder(model_id, kwargs: dict, optional: tuple[str, ...] = ()) -> str:
    """The local folder of an adapter given as a folder or a Hub id (downloaded, safetensors only)."""
    folder = os.path.join(str(model_id), kwargs.get("subfolder") or "")
    if os.path.isdir(folder):
        return folder
    return hub_adapter_folder(str(model_id), kwargs, optional)
