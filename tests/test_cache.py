"""The embedded model's on-disk cache: checksums checked on load, corrupt caches rebuilt, ``decoders cache``.

Everything runs on the tiny GGUF stand-in of tests/test_models.py (``fake_wheel``) in a temporary
``DECODERS_CACHE_DIR``, so nothing here converts the real model or touches the user's cache.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import torch

from decoders.errors import ModelLoadError
from decoders.models import EMBEDDED_NAME, MANIFEST, cache_entries, clear_cache, clear_model_cache, load_model
from tests import test_models
from tests.test_cli import run
from tests.test_models import logits

tiny_gguf, fake_wheel = test_models.tiny_gguf, test_models.fake_wheel  # the tiny GGUF and its fake wheel

TEXT = "The quick brown fox"


@pytest.fixture(autouse=True)
def fresh_model_cache():
    """Each test starts without models kept from other tests."""
    clear_model_cache()
    yield
    clear_model_cache()


@pytest.fixture
def conversions(monkeypatch):
    """How many times the GGUF file is converted (each conversion builds the cache)."""
    import decoders.models

    count = []
    real = decoders.models._load_gguf
    monkeypatch.setattr(decoders.models, "_load_gguf", lambda *args: count.append(1) or real(*args))
    return count


def cached_folder(root: Path) -> Path:
    (folder,) = [path for path in root.iterdir() if not path.name.startswith(".")]
    return folder


def overwrite_middle(path: Path, data: bytes) -> None:
    """Overwrite bytes in the middle of a file in place, keeping its size (what a bad disk or a stray write does)."""
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        handle.seek(size // 2)
        handle.write(data)
    assert path.stat().st_size == size


# ---------------------------------------------------------------- checksums


def test_the_cache_carries_the_checksums_of_its_files(fake_wheel):
    gguf_path, root = fake_wheel
    load_model()
    folder = cached_folder(root)
    manifest = json.loads((folder / MANIFEST).read_text())
    files = {path.name: path.stat().st_size for path in folder.iterdir() if path.name != MANIFEST}
    assert {name: entry["size"] for name, entry in manifest["files"].items()} == files
    assert all(len(entry["crc32"]) == 8 for entry in manifest["files"].values())
    assert manifest["model"] == EMBEDDED_NAME and manifest["source"]["file"] == gguf_path.name


def test_the_first_load_says_it_converts_the_model_once_and_later_loads_say_nothing(fake_wheel, caplog):
    gguf_path, root = fake_wheel
    with caplog.at_level(logging.WARNING, logger="decoders.models"):
        load_model()
    [record] = caplog.records
    assert "converting the embedded model once into" in record.getMessage()
    assert str(root) in record.getMessage() and "DECODERS_CACHE_DIR" in record.getMessage()
    caplog.clear()
    clear_model_cache()  # the in-process cache: the next load reads the folder
    with caplog.at_level(logging.WARNING, logger="decoders.models"):
        load_model()
    assert not caplog.records


@pytest.mark.parametrize(
    "garbage",
    [bytes(4096), b"\xff" * 4096],
    ids=["zeros-loads-as-wrong-weights", "ones-loads-as-nan"],
)
def test_corrupt_weights_are_detected_and_rebuilt(fake_wheel, conversions, caplog, garbage):
    _, root = fake_wheel
    expected = logits(load_model(), TEXT)
    folder = cached_folder(root)
    overwrite_middle(folder / "model.safetensors", garbage)
    clear_model_cache()
    unchecked = logits(load_model(folder), TEXT)  # loaded as a plain folder, the damage goes unnoticed
    assert not torch.equal(unchecked, expected)

    clear_model_cache()
    caplog.clear()  # the first load's "converting once"
    with caplog.at_level(logging.WARNING, logger="decoders.models"):
        loaded = load_model()

    assert torch.equal(logits(loaded, TEXT), expected)
    assert len(conversions) == 2  # the first load, then the rebuild
    [record] = caplog.records
    message = record.getMessage()
    assert str(folder) in message and "model.safetensors is corrupt" in message and "Rebuilding it" in message
    assert "\n" not in message
    assert [path.name for path in root.iterdir()] == [folder.name]  # the corrupt copy is gone
    assert [entry.status for entry in cache_entries()] == ["checksummed"]


def test_a_file_written_after_a_verified_load_is_checked_again(fake_wheel, conversions, caplog):
    """Loads skip the CRC of files not written since it last matched; a write is seen even when the writer puts
    the modification time back (the change time still moves)."""
    _, root = fake_wheel
    load_model()
    clear_model_cache()
    load_model()  # verified: every file's signature is recorded
    folder = cached_folder(root)
    weights = folder / "model.safetensors"
    assert all("checked" in entry for entry in json.loads((folder / MANIFEST).read_text())["files"].values())
    before = weights.stat()
    overwrite_middle(weights, b"\x00" * 64)
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))
    clear_model_cache()
    with caplog.at_level(logging.WARNING, logger="decoders.models"):
        load_model()
    assert len(conversions) == 2 and "model.safetensors is corrupt" in caplog.text


def test_a_corrupt_checksum_file_means_a_rebuild(fake_wheel, conversions, caplog):
    _, root = fake_wheel
    load_model()
    manifest = cached_folder(root) / MANIFEST
    manifest.write_text(manifest.read_text()[:40])
    clear_model_cache()
    with caplog.at_level(logging.WARNING, logger="decoders.models"):
        load_model()
    assert len(conversions) == 2 and f"checksum file {MANIFEST} is corrupt" in caplog.text
    json.loads(manifest.read_text())


def test_a_sound_cache_is_read_without_converting_again(fake_wheel, conversions, caplog):
    load_model()
    clear_model_cache()
    caplog.clear()  # the first load's "converting once"
    with caplog.at_level(logging.WARNING):
        load_model()
    assert len(conversions) == 1 and not caplog.records


def test_a_corrupt_cache_that_cannot_be_replaced_is_refused(fake_wheel, conversions, monkeypatch, capsys):
    _, root = fake_wheel
    load_model()
    folder = cached_folder(root)
    overwrite_middle(folder / "model.safetensors", bytes(4096))
    real_rename = os.rename

    def read_only(source, target, *args, **kwargs):  # the cache folder cannot be moved or deleted
        if Path(source) == folder:
            raise PermissionError(13, "Permission denied", str(source))
        return real_rename(source, target, *args, **kwargs)

    monkeypatch.setattr(os, "rename", read_only)
    clear_model_cache()
    with pytest.raises(ModelLoadError) as error:
        load_model()
    message = str(error.value)
    assert message.startswith(f"the cache at {folder} is corrupt: delete it (decoders cache --clear)")
    assert "model.safetensors is corrupt" in message and "PermissionError" in message
    assert len(conversions) == 1

    code, out, err = run(capsys, "generate", "hi", "--max-new-tokens", "2")
    assert code == 2 and not out
    assert f"the cache at {folder} is corrupt: delete it (decoders cache --clear)" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- a cache from an older decoders (no checksums)


def test_a_cache_without_checksums_loads_and_gets_them(fake_wheel, conversions):
    _, root = fake_wheel
    expected = logits(load_model(), TEXT)
    folder = cached_folder(root)
    written = json.loads((folder / MANIFEST).read_text())
    (folder / MANIFEST).unlink()  # as an older decoders left it
    assert [entry.status for entry in cache_entries()] == ["no checksums"]

    clear_model_cache()
    assert torch.equal(logits(load_model(), TEXT), expected)
    assert len(conversions) == 1  # loaded, not rebuilt
    assert json.loads((folder / MANIFEST).read_text()) == written  # and given its checksums
    assert [entry.status for entry in cache_entries()] == ["checksummed"]


def test_a_cache_without_checksums_holding_nan_is_rebuilt(fake_wheel, conversions, caplog):
    _, root = fake_wheel
    expected = logits(load_model(), TEXT)
    folder = cached_folder(root)
    (folder / MANIFEST).unlink()
    overwrite_middle(folder / "model.safetensors", b"\xff" * 4096)  # NaN weights
    clear_model_cache()
    with caplog.at_level(logging.WARNING, logger="decoders.models"):
        loaded = load_model()
    assert torch.equal(logits(loaded, TEXT), expected)
    assert len(conversions) == 2 and "no checksums" in caplog.text
    assert (folder / MANIFEST).is_file()


# ---------------------------------------------------------------- cache_entries, clear_cache, `decoders cache`


def test_cache_entries_and_clear_cache_touch_only_decoders_folders(fake_wheel):
    gguf_path, root = fake_wheel
    assert cache_entries() == [] and clear_cache() == []  # no root yet
    load_model()
    folder = cached_folder(root)
    leftover = root / f".{folder.name}.k3x_9a0q"  # what an interrupted conversion leaves
    leftover.mkdir()
    (leftover / "config.json").write_text("{}")
    keep = [root / "notes.txt", root / "photos-2024", root / "other-123", root / ".hidden-1.abcdefgh"]
    keep[0].write_text("mine")
    keep[1].mkdir()
    (keep[1] / "config.json").write_text("{}")  # no model.safetensors: not a model cache
    (keep[2] / "sub").mkdir(parents=True)  # holds a folder: decoders never writes one
    (keep[2] / "config.json").write_text("{}")
    (keep[2] / "model.safetensors").write_text("")
    (keep[3] / "sub").mkdir(parents=True)

    entries = cache_entries()
    assert [(entry.path, entry.status) for entry in entries] == [(leftover, "incomplete"), (folder, "checksummed")]
    ours = entries[1]
    assert ours.model == EMBEDDED_NAME and gguf_path.name in ours.source
    assert ours.size == sum(path.stat().st_size for path in folder.iterdir())

    assert clear_cache() == [leftover, folder]
    assert sorted(root.iterdir()) == sorted(keep)


def test_cli_cache_shows_then_clears(fake_wheel, capsys):
    _, root = fake_wheel
    code, out, _ = run(capsys, "cache")
    assert code == 0 and "no cached models" in out and str(root) in out

    load_model()
    folder = cached_folder(root)
    size = sum(path.stat().st_size for path in folder.iterdir())
    code, out, _ = run(capsys, "cache", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["root"] == str(root) and data["size"] == size
    [entry] = data["entries"]
    assert entry["path"] == str(folder) and entry["size"] == size
    assert entry["model"] == EMBEDDED_NAME and entry["status"] == "checksummed"

    code, out, err = run(capsys, "cache")
    assert code == 0 and folder.name in out and "checksummed" in out and "--clear" in err

    code, out, _ = run(capsys, "cache", "--clear", "--json")
    assert code == 0
    assert json.loads(out) == {"root": str(root), "removed": [entry], "freed": size}
    assert list(root.iterdir()) == []

    clear_model_cache()
    load_model()
    code, out, _ = run(capsys, "cache", "--clear")
    assert code == 0 and f"removed {folder}" in out and "1 cache folder" in out
    assert list(root.iterdir()) == []


def test_cli_cache_clear_failure_is_one_line(fake_wheel, monkeypatch, capsys):
    import shutil

    _, root = fake_wheel
    load_model()

    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(shutil, "rmtree", refuse)
    code, out, err = run(capsys, "cache", "--clear")
    assert code == 2 and not out
    assert "could not delete 1 model cache folder" in err and str(cached_folder(root)) in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
