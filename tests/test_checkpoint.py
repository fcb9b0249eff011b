from __future__ import annotations

from pathlib import Path

import torch

from kdtui.checkpoint import (
    list_checkpoints,
    load_checkpoint,
    load_latest,
    prune_old,
    save_checkpoint,
)


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
