"""Sharing adapters on the Hugging Face Hub: checks before anything is uploaded, and one atomic commit."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import HfApi


REQUIRED_FILES = ("adapter_config.json", "adapter_model.safetensors")


def check_repo_id(repo_id: str) -> None:
    """Raise a ValueError naming the rule if `repo_id` is not a valid Hub repository id."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

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
