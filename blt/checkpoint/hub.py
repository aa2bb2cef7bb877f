"""Hugging Face hub ids as checkpoints: ``"owner/name"`` or ``"owner/name@revision"`` -> a local snapshot folder.

Every loader passes what it is given through :func:`resolve` first:

- a path that exists is used as it is, so a local folder named like a hub id wins over the hub;
- anything else that reads as a model id is fetched with ``huggingface_hub.snapshot_download`` into the standard
  hub cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``), the token coming from ``HF_TOKEN`` or ``hf auth login``.
  Only the files a checkpoint layout reads are fetched: first the small JSON files, then the weights of the
  layout they describe (ours, transformers', or the original facebookresearch/blt release);
- offline (``HF_HUB_OFFLINE=1``, or the hub unreachable) the cached snapshot is used; an id that is not cached,
  a gated or private repo, or an unknown revision is a :class:`CheckpointError` saying so.

huggingface_hub is imported only when an id is resolved.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from blt.checkpoint.files import CheckpointError

# owner/name as the hub spells model ids, then an optional @branch, tag or commit
_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(@(?P<revision>[\w./-]+))?")

# what a layout's reader opens before it knows which weights it needs
CONFIG_FILES = [
    "config.json",
    "model.safetensors.index.json",
    "params.json",
    "train_args.json",
    "entropy_model/params.json",
]
OURS_WEIGHTS = ["model.safetensors", "model-*.safetensors", "tokenizer.model"]  # ours and transformers'
ORIGINAL_WEIGHTS = ["model.safetensors", "entropy_model/consolidated.pth"]  # facebook/blt-1b, blt-7b
ENTROPY_FOLDER_WEIGHTS = ["consolidated.pth"]  # an entropy_model/ folder alone


def parse_id(text: str) -> tuple[str, str | None] | None:
    """``"owner/name@rev"`` -> ``("owner/name", "rev")``; None for text that is not a model id."""
    match = _ID.fullmatch(text)
    return (match["repo"], match["revision"]) if match else None


def resolve(path: str | Path) -> Path:
    """The local folder behind ``path``: itself when it exists or is no hub id, else the id's snapshot."""
    parsed = None if Path(path).exists() else parse_id(str(path))
    if parsed is None:
        return Path(path)
    repo, revision = parsed
    folder = fetch(repo, revision, CONFIG_FILES)
    fetch(repo, revision, weight_files(folder))
    return folder


def weight_files(folder: Path) -> list[str]:
    """The weight files of the layout the JSON files in ``folder`` describe."""
    config = _json_object(folder / "config.json")
    if isinstance(config.get("args"), dict) or (folder / "entropy_model" / "params.json").is_file():
        return ORIGINAL_WEIGHTS
    if not config and (folder / "params.json").is_file():
        return ENTROPY_FOLDER_WEIGHTS
    return OURS_WEIGHTS


def _json_object(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # absent or broken: the loader that reads it says which
    return data if isinstance(data, dict) else {}


def offline() -> bool:
    """HF_HUB_OFFLINE as it is now (huggingface_hub reads it once, when it is first imported)."""
    from huggingface_hub import constants

    return (
        os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE") or constants.HF_HUB_OFFLINE
    )


def cache_dir() -> Path:
    """The hub cache as the environment says now: HF_HUB_CACHE, else HF_HOME/hub, else the default."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(constants.HF_HUB_CACHE)


def fetch(repo: str, revision: str | None, patterns: list[str]) -> Path:
    """Snapshot folder of ``repo`` at ``revision`` holding the files matching ``patterns`` that it has."""
    import huggingface_hub
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    name = f"{repo}@{revision}" if revision else repo
    cache, is_offline = cache_dir(), offline()
    try:
        folder = huggingface_hub.snapshot_download(
            repo, revision=revision, allow_patterns=patterns, cache_dir=cache, local_files_only=is_offline
        )
    except GatedRepoError:
        raise CheckpointError(
            f"hub repo {name} is gated: request access on https://huggingface.co/{repo}, then log in "
            "(`hf auth login`, or set HF_TOKEN)"
        ) from None
    except RepositoryNotFoundError:
        raise CheckpointError(
            f"{name} is neither a local directory nor a hub repo you can read (a private repo needs "
            "`hf auth login` or HF_TOKEN)"
        ) from None
    except RevisionNotFoundError:
        raise CheckpointError(f"hub repo {repo} has no revision {revision!r}") from None
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if is_offline else "the hub cannot be reached"
        raise CheckpointError(
            f"{name} is not a local directory, and hub repo {name} is not cached in {cache} ({why}): "
            "download it once online, or give a local directory"
        ) from None
    except HfHubHTTPError as e:
        status = getattr(e.response, "status_code", None)
        hint = (
            ": request access and log in (`hf auth login`, or set HF_TOKEN)" if status in (401, 403) else ""
        )
        raise CheckpointError(f"could not fetch hub repo {name} ({e}){hint}") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"could not fetch hub repo {name}: {e}") from None
    return Path(folder)
