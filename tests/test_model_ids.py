"""Model identity in cache keys: a folder's content, not its place or its mtimes."""

from __future__ import annotations

import os

from rankify_cli import model_ids


def _model(folder, weights=b"w" * 1000):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"hidden_size": 8}')
    (folder / "model.safetensors").write_bytes(weights)
    return folder


def test_same_content_elsewhere_same_id_and_mtime_does_not_matter(tmp_path):
    a, b = _model(tmp_path / "a"), _model(tmp_path / "b")
    os.utime(b / "model.safetensors", (1, 1))
    assert model_ids.folder_fingerprint(a) == model_ids.folder_fingerprint(b)
    # a README, a hidden file or code beside the weights change nothing
    (b / "README.md").write_text("card")
    (b / ".cache").mkdir()
    (b / ".cache" / "x").write_text("y")
    assert model_ids.folder_fingerprint(a) == model_ids.folder_fingerprint(b)


def test_changed_weights_or_config_change_the_id(tmp_path):
    a = _model(tmp_path / "a")
    before = model_ids.folder_fingerprint(a)
    (a / "model.safetensors").write_bytes(b"w" * 999 + b"x")
    after_weights = model_ids.folder_fingerprint(a)
    (a / "config.json").write_text('{"hidden_size": 16}')
    assert len({before, after_weights, model_ids.folder_fingerprint(a)}) == 3


def test_big_files_are_sampled_but_a_changed_slice_still_shows(tmp_path, monkeypatch):
    monkeypatch.setattr(model_ids, "SAMPLE_ABOVE", 1 << 20)
    monkeypatch.setattr(model_ids, "_SLICE", 1 << 16)
    size = 3 << 20
    a = _model(tmp_path / "a", bytes(size))
    before = model_ids.folder_fingerprint(a)
    data = bytearray(size)
    data[size // 2 + 10] = 1  # inside the middle slice
    (a / "model.safetensors").write_bytes(bytes(data))
    assert model_ids.folder_fingerprint(a) != before


def test_hub_id_without_a_cached_snapshot_falls_back_to_id_and_revision():
    assert model_ids.hub_fingerprint("no-org/no-model", None) == "hub:no-org/no-model@main"
    assert model_ids.model_fingerprint("no-org/no-model", "v2", None) == "hub:no-org/no-model@v2"
