from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

from kdtui.checkpoint import (
    list_checkpoints,
    load_checkpoint,
    load_latest,
    prune_old,
    save_checkpoint,
)
from kdtui.errors import KdtuiError


def _save(root: Path, step: int) -> Path:
    return save_checkpoint(
        root / f"step-{step:08d}",
        model_state={"w": torch.full((2, 2), float(step))},
        train_state={"optimizer": {"lr": 0.1 * step}, "rng": [torch.get_rng_state()]},
        state={"step": step},
    )


def test_round_trip(tmp_path: Path) -> None:
    path = _save(tmp_path, 3)
    loaded = load_checkpoint(path)
    assert loaded.state["step"] == 3
    assert torch.equal(loaded.model["w"], torch.full((2, 2), 3.0))
    assert loaded.train_state["optimizer"] == {"lr": 0.1 * 3}


def test_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path: Path) -> None:
    _save(tmp_path, 1)
    newest = _save(tmp_path, 2)
    data = bytearray((newest / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (newest / "model.safetensors").write_bytes(bytes(data))
    warnings: list[str] = []
    loaded = load_latest(tmp_path, warnings.append)
    assert loaded is not None and loaded.state["step"] == 1
    assert "fails its checksum" in warnings[0]


def test_half_written_folders_are_ignored_and_old_ones_pruned(tmp_path: Path) -> None:
    for step in (1, 2, 3):
        _save(tmp_path, step)
    (tmp_path / "step-00000004.tmp").mkdir()
    assert [p.name for p in list_checkpoints(tmp_path)][-1] == "step-00000003"
    prune_old(tmp_path, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000002", "step-00000003"]


@pytest.mark.parametrize("library", ["safetensors", "torch"])
def test_a_full_disk_as_the_libraries_report_it_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, library: str
) -> None:
    """Neither library raises an OSError on a full disk (measured: both messages below came
    from a benchmark that filled the disk), so the write must still be told apart from a bug."""
    import kdtui.checkpoint as ck

    _save(tmp_path, 1)

    def fail(*args: object, **kwargs: object) -> None:
        if library == "safetensors":
            raise SafetensorError(
                "Error while serializing: I/O error: No space left on device (os error 28)"
            )
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 14144 vs 1")

    if library == "safetensors":
        monkeypatch.setattr(ck, "save_file", fail)
    else:
        monkeypatch.setattr(ck.torch, "save", fail)
        monkeypatch.setattr(
            ck.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 0)
        )
    with pytest.raises(KdtuiError, match=r"No space left on device\..*--resume RUN"):
        _save(tmp_path, 2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000001"]
    assert not list(tmp_path.glob("*.tmp"))


def test_a_failed_write_with_space_left_is_not_taken_for_a_full_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kdtui.checkpoint as ck

    def fail(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(ck.torch, "save", fail)
    with pytest.raises(RuntimeError, match="a bug"):
        _save(tmp_path, 1)
    assert not list(tmp_path.iterdir())
