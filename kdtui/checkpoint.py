"""Checkpoints: everything a resumed run needs, written atomically, verified on load.

A checkpoint is a folder `RUN/checkpoints/step-00000123/` holding
  model.safetensors   model weights (safetensors: loading never unpickles)
  train_state.pt      optimizer, scheduler, hook states and RNG states (tensors and plain
                      values only, loaded with `weights_only=True`)
  state.json          engine position and bookkeeping, plus a SHA-256 of every other file
It is first written under a temporary name and renamed when complete, so a crash or SIGKILL
mid-write leaves the previous checkpoint untouched; a folder whose checksums do not match is
reported and skipped in favour of the one before it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from kdtui.errors import KdtuiError

STATE_FILE = "state.json"
MODEL_FILE = "model.safetensors"
TRAIN_STATE_FILE = "train_state.pt"
TEMPORARY_SUFFIX = ".tmp"  # `temporary`: a file or folder not yet complete


@dataclass
class LoadedCheckpoint:
    path: Path
    state: dict[str, Any]  # from state.json
    model: dict[str, torch.Tensor]
    train_state: dict[str, Any]


def save_checkpoint(
    folder: Path,
    *,
    model_state: dict[str, torch.Tensor],
    train_state: dict[str, Any],
    state: dict[str, Any],
    before_commit: Callable[[], None] | None = None,
) -> Path:
    """Write a checkpoint folder atomically (`atomic_folder`, with every file fsynced).

    `before_commit` runs with every file written but the folder not yet in place (tests crash
    the process there)."""
    with atomic_folder(folder, what=f"checkpoint {folder}") as tmp:
        # safetensors refuses shared or non-contiguous storage; clone keeps the saved file exact
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in model_state.items()}, tmp / MODEL_FILE
        )
        torch.save(train_state, tmp / TRAIN_STATE_FILE)
        files = {name: _sha256(tmp / name) for name in (MODEL_FILE, TRAIN_STATE_FILE)}
        _write_synced(tmp / STATE_FILE, _json_text({**state, "files": files}))
        for name in (MODEL_FILE, TRAIN_STATE_FILE):
            _fsync(tmp / name)
        if before_commit is not None:
            before_commit()
    return folder


def temporary(path: Path) -> Path:
    """Where PATH is written until it is complete: PATH.tmp, beside it. Every atomic write in
    kdtui uses this one name (folders, checkpoints, JSON and text files, sparse weights, the
    prune cache), so what a killed write leaves is recognised (`remove_unfinished`,
    `list_checkpoints`)."""
    return path.with_name(path.name + TEMPORARY_SUFFIX)


def remove_unfinished(root: Path) -> None:
    """Remove the temporary folders of checkpoints whose write never finished (the process was
    killed while writing), in `root` (step-N.tmp) and of `root` itself (a single checkpoint
    such as RUN/best): they never count as checkpoints, and nothing else would remove them."""
    if root.is_dir():
        for tmp in root.glob(f"step-*{TEMPORARY_SUFFIX}"):
            shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(temporary(root), ignore_errors=True)


@contextmanager
def atomic_folder(folder: Path, *, what: str = "") -> Iterator[Path]:
    """Write a folder in full or not at all: the block writes into a temporary sibling, which
    replaces `folder` when the block ends. A failure (a full disk) removes the temporary folder
    and leaves any previous `folder` as it was; an OSError becomes a clear KdtuiError that
    names WHAT was written (`folder` by default)."""
    tmp = temporary(folder)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        yield tmp
        replace_folder(tmp, folder)
    except Exception as e:
        error = write_error(e, tmp, f"could not write {what or folder}")
        shutil.rmtree(tmp, ignore_errors=True)
        if error is None:
            raise
        raise error from None
    except BaseException:  # a second Ctrl-C or SIGTERM stops the write at once
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# Below this much free space a failed write is taken for a full disk: torch.save reports one as
# "RuntimeError: ... unexpected pos", and safetensors as a SafetensorError, neither an OSError.
NEARLY_FULL_BYTES = 64 * 2**20


def write_error(error: Exception, target: Path, what: str) -> KdtuiError | None:
    """The clear error for a write into `target` that failed for a reason the user can act on
    (a full disk, a read-only folder), or None for anything else: a bug stays loud. Called
    before the half-written files are removed, while a full disk is still full."""
    full = (isinstance(error, OSError) and error.errno == errno.ENOSPC) or (
        "No space left" in str(error)
    )
    if not full and not isinstance(error, OSError):
        try:
            full = shutil.disk_usage(_existing(target)).free < NEARLY_FULL_BYTES
        except OSError:
            full = False
    if full:
        return KdtuiError(
            f"{what}: No space left on device. Free some space (a finished run's checkpoints/ "
            "and best/ are read by nothing) and continue with --resume RUN: it restarts from "
            "the last complete checkpoint"
        )
    if isinstance(error, OSError):
        return KdtuiError(f"{what}: {error.strerror or error}")
    return None


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def replace_folder(new: Path, folder: Path) -> None:
    """Move the complete folder `new` to `folder`. An existing `folder` is renamed aside first
    and deleted only after, so no moment is spent without a complete copy on disk."""
    old = folder.with_name(f".{folder.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(new, folder)
    _fsync_dir(folder.parent)
    shutil.rmtree(old, ignore_errors=True)


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint folders, oldest first (temporary folders are ignored)."""
    if not root.is_dir():
        return []
    return sorted(
        p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(TEMPORARY_SUFFIX)
    )


def load_latest(root: Path, warn: Callable[[str], None]) -> LoadedCheckpoint | None:
    """The newest checkpoint that verifies; damaged ones are reported through `warn`."""
    for path in reversed(list_checkpoints(root)):
        try:
            return load_checkpoint(path)
        except KdtuiError as e:
            warn(f"{e}; falling back to the previous checkpoint")
    return None


def load_checkpoint(path: Path) -> LoadedCheckpoint:
    try:
        state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        raise KdtuiError(f"checkpoint {path} is damaged (unreadable {STATE_FILE})") from None
    for name, digest in state.get("files", {}).items():
        if not (path / name).is_file() or _sha256(path / name) != digest:
            raise KdtuiError(f"checkpoint {path} is damaged ({name} fails its checksum)")
    try:
        model = load_file(path / MODEL_FILE)
        train_state = torch.load(path / TRAIN_STATE_FILE, weights_only=True, map_location="cpu")
    except Exception as e:  # noqa: BLE001 - any decoding failure means a damaged file
        raise KdtuiError(f"checkpoint {path} is damaged: {e}") from None
    return LoadedCheckpoint(path, state, model, train_state)


def prune_old(root: Path, keep: int) -> None:
    for path in list_checkpoints(root)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


def rng_state() -> dict[str, Any]:
    import random

    version, internal, gauss = random.getstate()
    return {"python": [version, list(internal), gauss], "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    import random

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])


def write_text_atomic(path: Path, text: str) -> None:
    """Write PATH in full or not at all: TEXT goes to `temporary(path)`, synced, then renamed."""
    tmp = temporary(path)
    _write_synced(tmp, text)
    os.replace(tmp, path)


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, _json_text(data))


def _json_text(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
