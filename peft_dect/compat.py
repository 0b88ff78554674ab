"""The on-disk format of peft-dect adapter configs, so that an adapter from a newer, incompatible release is refused.

Every config records ``format_version`` ("MAJOR.MINOR"). A newer minor format only adds optional fields (peft
ignores unknown fields with a warning); a newer major format changes the meaning of tensors or fields, so loading it
with this release would give wrong predictions: it is an error that says to upgrade.
"""

from __future__ import annotations


FORMAT_VERSION = "1.0"


def check_format_version(version: str | None, what: str = "This adapter") -> None:
    """Raise a ValueError if `version` is malformed or of a newer major format than this release reads."""
    if version is None:  # configs written before the field existed are format 1
        return
    try:
        major = int(str(version).split(".")[0])
    except ValueError:
        raise ValueError(f"{what} has an unreadable format_version {version!r}; expected 'MAJOR.MINOR'.") from None
    supported = int(FORMAT_VERSION.split(".")[0])
    if major > supported:
        raise ValueError(
            f"{what} was saved in peft-dect adapter format {version}, newer than the format {FORMAT_VERSION} this "
            "installation reads; upgrade with `pip install -U peft-dect` to load it."
        )
