"""Saving and loading adapter folders: atomic staged saves, folder checks, the subfolder rule, format versions.

A leaf module: it knows files, safetensors headers and peft's name prefixes, and nothing of any peft-dect method.

Format versions. Every peft-dect adapter config records ``format_version`` ("MAJOR.MINOR"). A newer minor format
only adds optional fields (peft ignores unknown fields with a warning); a newer major format changes the meaning of
tensors or fields, so loading it with an older release would give wrong predictions: it is an error that says to
upgrade. Format 2.0 moved the values peft-dect records (base model sizes, label-word token ids) into a nested
``recorded`` entry, the demonstration settings into a nested ``demonstrations`` entry and the demonstration pool
into ``demonstration_pool.json`` beside the config; format 1.0 adapters still load.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from peft.mapping import PEFT_TYPE_TO_PREFIX_MAPPING
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file


try:
    import fcntl
except ImportError:  # Windows: saves to one folder are not serialised there
    fcntl = None


FORMAT_VERSION = "2.1"
"""Format of the adapter configs this release writes."""
CLASSIFIER_FORMAT = 1
"""Format of `label_word_classifier.json` (label-word classifiers, LM-BFF, prompt tuning)."""
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
POOL_FILE = "demonstration_pool.json"
"""The demonstration pool of an adapter or classifier that uses demonstrations, beside its config."""
PICKLED_WEIGHTS = ("adapter_model.bin", "adapter_model.pt")
PROMPT_LEARNING_TYPES = ("PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING")
SAVE_ID_KEY = "save_id"
"""Key of the id of one save, written into both the adapter config and the weights' metadata and checked on load:
a folder whose config and weights come from different saves (an interrupted or concurrent save) is refused."""


def format_major(version: str | None, what: str = "This adapter") -> int:
    """The major number of a "MAJOR.MINOR" format version (1 for configs written before the field existed)."""
    if version is None:
        return 1
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        raise ValueError(f"{what} has an unreadable format_version {version!r}; expected 'MAJOR.MINOR'.") from None


def check_format_version(version: str | None, what: str = "This adapter") -> None:
    """Raise a ValueError if `version` is malformed or of a newer major format than this release reads."""
    if format_major(version, what) > format_major(FORMAT_VERSION):
        raise ValueError(
            f"{what} was saved in peft-dect adapter format {version}, newer than the format {FORMAT_VERSION} this "
            "installation reads; upgrade with `pip install -U peft-dect` to load it."
        )


def adapter_folder(directory: str | os.PathLike, adapter_name: str) -> str:
    """Where peft saves adapter `adapter_name` under `directory`: the folder itself for "default", else a subfolder."""
    directory = os.fspath(directory)
    return directory if adapter_name == "default" else os.path.join(directory, adapter_name)


@contextmanager
def save_lock(parent: str) -> Iterator[None]:
    """Hold an exclusive lock on folder `parent` (fcntl.flock) while saving into it.

    Two saves into the same place (threads or processes) thus run one after the other instead of interleaving
    their renames, which could leave the weights of one with the config of the other.
    """
    if fcntl is None:
        yield
        return
    fd = os.open(parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


@contextmanager
def staged_folder(save_directory: str | os.PathLike) -> Iterator[str]:
    """A hidden folder next to `save_directory` to write a save into; on success its files are moved in.

    An interrupted save thus leaves the previous files intact and no half-written one, and saves into one folder
    are serialised (`save_lock`). A README.md already in the target (a card the user wrote) is copied in first, so
    that card writers can see and keep it. A README.md that is a symbolic link is never followed: its target is not
    read, and the link is kept as it is (the save writes no card over it).
    """
    target = os.path.abspath(os.fspath(save_directory))
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    with save_lock(parent):
        staging = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.saving-", dir=parent)
        try:
            card = os.path.join(target, "README.md")
            if os.path.isfile(card) and not os.path.islink(card):
                shutil.copy2(card, os.path.join(staging, "README.md"), follow_symlinks=False)
            yield staging
            move_into_place(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def move_into_place(staging: str, target: str) -> None:
    """Move every file of `staging` to the same place under `target` with `os.replace` (atomic per file).

    Weights go before configs, so a config on disk never describes tensors that are not there yet.
    """
    files = [os.path.join(root, f) for root, _, names in os.walk(staging) for f in names]
    files.sort(key=lambda f: (not f.endswith(".safetensors"), f.endswith(".md"), f))
    for path in files:
        dest = os.path.join(target, os.path.relpath(path, staging))
        if os.path.basename(dest) == "README.md" and os.path.islink(dest):
            continue  # a linked card is the user's: neither followed nor replaced
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        os.replace(path, dest)


def inside_folder(folder: str | os.PathLike, relative, what: str) -> str:
    """The path of `relative` inside `folder`, or a ValueError when it is absolute, climbs out with '..', or
    resolves (through symbolic links) to a place outside `folder`: an adapter's files never point elsewhere."""
    folder = os.fspath(folder)
    if not isinstance(relative, str) or not relative or os.path.isabs(relative) or "\\" in relative:
        raise ValueError(f"{what} must be a relative path inside the adapter folder {folder}, got {relative!r}.")
    if ".." in relative.split("/"):
        raise ValueError(f"{what} {relative!r} climbs out of the adapter folder {folder} ('..'); save it again.")
    path = os.path.join(folder, relative)
    root = os.path.realpath(folder)
    if os.path.commonpath([root, os.path.realpath(path)]) != root:
        raise ValueError(f"{what} {relative!r} leads outside the adapter folder {folder} (a symbolic link).")
    return path


def new_save_id() -> str:
    """A fresh id for one save (see `SAVE_ID_KEY`)."""
    return uuid.uuid4().hex


def stamp_weights(folder: str | os.PathLike, save_id: str) -> None:
    """Record `save_id` in the metadata of the safetensors weights of the adapter saved in `folder`."""
    path = os.path.join(os.fspath(folder), WEIGHTS_FILE)
    with safe_open(path, framework="pt") as shard:
        metadata = dict(shard.metadata() or {})
    save_file(load_file(path), path, metadata={**metadata, SAVE_ID_KEY: save_id})


def tensor_shapes(folder: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor in `folder`'s safetensors weights, read from the header (nothing is allocated)."""
    weights = os.path.join(os.fspath(folder), WEIGHTS_FILE)
    try:
        with safe_open(weights, framework="pt") as shard:
            return {name: tuple(shard.get_slice(name).get_shape()) for name in shard.keys()}
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{weights} is not a valid safetensors file ({err}); save the adapter again.") from None


def check_tensor_shapes(folder: str | os.PathLike, expected: Mapping[str, tuple]) -> None:
    """Refuse weights whose tensors (by name suffix, e.g. 'dect_W') have other shapes than `expected` says (None:
    any size), from the header alone: a config with absurd sizes is refused before anything is allocated."""
    for name, shape in tensor_shapes(folder).items():
        want = next((s for suffix, s in expected.items() if name.endswith(suffix)), None)
        if want is None:
            continue
        if len(shape) != len(want) or any(w is not None and w != got for w, got in zip(want, shape)):
            raise ValueError(
                f"{os.path.join(os.fspath(folder), WEIGHTS_FILE)} holds {name} of shape {list(shape)}, but its "
                f"{CONFIG_FILE} describes {[w if w is not None else '*' for w in want]}: the tensors do not fit this "
                "adapter's shapes (an edited config, or weights of another adapter); save the adapter again."
            )


def read_json_object(path: str | os.PathLike, what: str = "adapter") -> dict:
    """A JSON object from `path`, or a ValueError that names the file and says to save it again."""
    try:
        with open(path, encoding="utf-8") as fh:
            value = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not a readable JSON file ({err}); save the {what} again.") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} does not hold a JSON object; save the {what} again.")
    return value


def check_adapter_folder(folder: str | os.PathLike) -> None:
    """Raise a ValueError naming the problem if `folder` is not a loadable adapter folder. Nothing is unpickled.

    Checked: the config is a readable JSON object of a format this release reads, the weights are a readable
    safetensors file (a pickled `.bin` is named and refused), every tensor belongs to the config's peft type, and
    config and weights carry the same save id when both record one (a folder mixing two saves is refused).
    """
    folder = os.fspath(folder)
    config = os.path.join(folder, CONFIG_FILE)
    weights = os.path.join(folder, WEIGHTS_FILE)
    if not os.path.isfile(config):
        raise ValueError(f"{folder} has no {CONFIG_FILE}: it is not a saved adapter (use save_pretrained).")
    if not os.path.isfile(weights):
        pickled = [f for f in PICKLED_WEIGHTS if os.path.isfile(os.path.join(folder, f))]
        hint = f" ({pickled[0]} is a pickle, which peft-dect never loads)" if pickled else ""
        raise ValueError(f"{folder} has no {WEIGHTS_FILE}{hint}; save the adapter with save_pretrained.")
    try:
        with safe_open(weights, framework="pt") as shard:
            names = list(shard.keys())
            metadata = shard.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{weights} is not a valid safetensors file ({err}); save the adapter again.") from None
    saved = read_json_object(config, "adapter config")
    check_format_version(saved.get("format_version"), f"The adapter in {folder}")
    peft_type = saved.get("peft_type")
    prefix = PEFT_TYPE_TO_PREFIX_MAPPING.get(peft_type)
    if peft_type in PROMPT_LEARNING_TYPES:  # peft saves their prompt as one tensor
        unknown = [n for n in names if n != "prompt_embeddings"]
    else:
        unknown = [n for n in names if prefix is not None and f".{prefix}" not in n]
    if unknown:
        raise ValueError(
            f"{weights} holds tensors that are not {peft_type}'s ({unknown[:3]}); the weights and the config "
            "come from different adapters."
        )
    config_id, weights_id = saved.get(SAVE_ID_KEY), metadata.get(SAVE_ID_KEY)
    if config_id is not None and weights_id is not None and config_id != weights_id:
        raise ValueError(
            f"{folder} mixes files of two saves: its {CONFIG_FILE} and {WEIGHTS_FILE} were written by different "
            "save_pretrained calls (one was interrupted, or two ran at once); save the adapter again."
        )
