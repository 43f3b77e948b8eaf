"""The Multi-Fashion benchmark: the data construction (overlay, pairing, labels, determinism)
and an end-to-end run of the benchmark on a few batches.

Synthetic items stand in for Fashion-MNIST except in the test marked as needing Debian's
``dataset-fashion-mnist`` files (skipped where they are absent), so the rest runs anywhere.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from benchmarks import multifashion, multifashion_data
from benchmarks.multifashion_data import CANVAS, ITEM, build, overlay, pair_indices


def _items(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, ITEM, ITEM), dtype=np.uint8), rng.integers(0, 10, n)


def test_overlay_places_the_items_at_their_offsets_and_takes_the_maximum():
    top_left, bottom_right = _items(3, seed=1)[0], _items(3, seed=2)[0]
    canvas = overlay(top_left, bottom_right)
    assert canvas.shape == (3, 1, CANVAS, CANVAS) and canvas.dtype == np.uint8
    # Pixel by pixel: each item covers its 28 x 28 window, the canvas is the larger value.
    expected = np.zeros((3, CANVAS, CANVAS), dtype=np.uint8)
    for r in range(CANVAS):
        for c in range(CANVAS):
            a = top_left[:, r, c] if r < 28 and c < 28 else 0
            b = bottom_right[:, r - 6, c - 6] if 6 <= r < 34 and 6 <= c < 34 else 0
            expected[:, r, c] = np.maximum(a, b)
    np.testing.assert_array_equal(canvas[:, 0], expected)
    # Landmarks: the top-left item alone at (0, 0), the bottom-right one alone at (33, 33);
    # rows and columns 34-35 and the top-right and bottom-left corners stay empty.
    np.testing.assert_array_equal(canvas[:, 0, 0, 0], top_left[:, 0, 0])
    np.testing.assert_array_equal(canvas[:, 0, 33, 33], bottom_right[:, 27, 27])
    assert not canvas[:, 0, 34:, :].any() and not canvas[:, 0, :, 34:].any()
    assert not canvas[:, 0, :6, 28:].any() and not canvas[:, 0, 28:, :6].any()


def test_pairing_uses_each_item_once_per_position_per_copy_and_never_with_itself():
    pairs = pair_indices(50, pairs_per_image=3, seed=7, split="train")
    assert pairs.shape == (150, 2)
    for block in pairs.reshape(3, 50, 2):
        assert sorted(block[:, 0]) == list(range(50)) and sorted(block[:, 1]) == list(range(50))
        assert (block[:, 0] != block[:, 1]).all()
    # Seeded: the same arguments give the same pairs; another seed or split, others.
    np.testing.assert_array_equal(pairs, pair_indices(50, pairs_per_image=3, seed=7, split="train"))
    assert not np.array_equal(pairs, pair_indices(50, pairs_per_image=3, seed=8, split="train"))
    assert not np.array_equal(pairs, pair_indices(50, pairs_per_image=3, seed=7, split="test"))


def test_build_labels_are_the_two_items_classes_and_the_set_is_deterministic():
    images, labels = _items(40)
    data = build(images[:, None], labels, split="train", pairs_per_image=2, seed=3)
    assert len(data) == 80 and data.images.shape == (80, 1, CANVAS, CANVAS)
    assert data.labels.dtype == np.int64 and data.labels.shape == (80, 2)
    np.testing.assert_array_equal(data.labels, labels[data.sources])
    np.testing.assert_array_equal(
        data.images, overlay(images[data.sources[:, 0]], images[data.sources[:, 1]])
    )
    again = build(images, labels, split="train", pairs_per_image=2, seed=3)
    assert multifashion_data.fingerprint(again) == multifashion_data.fingerprint(data)
    other = build(images, labels, split="train", pairs_per_image=2, seed=4)
    assert multifashion_data.fingerprint(other) != multifashion_data.fingerprint(data)


def test_built_from_the_fashion_mnist_files():
    from anl.integrations.mtard.data.registry import load_dataset

    try:
        source = load_dataset("fashion_mnist", "test", download=False, progress=False)
    except FileNotFoundError:
        pytest.skip("the Fashion-MNIST files are absent (apt-get install dataset-fashion-mnist)")
    data = multifashion_data.load("test", limit=30)
    assert data.images.shape == (60, 1, CANVAS, CANVAS)
    np.testing.assert_array_equal(data.labels, source.labels.numpy()[data.sources])
    first = source.images.numpy()[data.sources[0, 0], 0]
    np.testing.assert_array_equal(data.images[0, 0, :6, :6], first[:6, :6])  # outside the overlap
    assert multifashion_data.fingerprint(multifashion_data.load("test", limit=30)) == (
        multifashion_data.fingerprint(data)
    )


@pytest.mark.parametrize("method", list(multifashion.METHODS))
def test_every_method_trains_a_few_batches(method):
    images, labels = _items(24)
    train = build(images, labels, split="train", pairs_per_image=1)
    test = build(images[:8], labels[:8], split="test", pairs_per_image=1)
    run = multifashion.train_run(
        method, 0, train, test, epochs=2, batch_size=8, lr=1e-3, log=lambda _: None
    )
    assert run["steps"] == 6 and run["steps_per_epoch"] == 3
    assert len(run["test_acc"]) == 2 and all(0 <= a <= 100 for a in run["test_acc"])
    assert np.isfinite(run["trajectory"]["weights"]).all()
    assert len(run["trajectory"]["step"]) == 6


def test_the_benchmark_runs_end_to_end(monkeypatch, tmp_path):
    def fake_load(split, *, pairs_per_image, seed, limit, data_dir):
        images, labels = _items(32 if split == "train" else 8, seed=len(split))
        return build(images, labels, split=split, pairs_per_image=pairs_per_image, seed=seed)

    monkeypatch.setattr(multifashion_data, "load", fake_load)
    threads = torch.get_num_threads()
    args = "--methods constant anl --seeds 0 1 --epochs 1 --batch-size 16 --timing-repeats 2"
    args += " --timing-inner 1 --timing-warmup 1 --out-dir"
    try:
        record = multifashion.main([*args.split(), str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    assert {(r["method"], r["seed"]) for r in record["runs"]} == {
        (m, s) for m in ("constant", "anl") for s in (0, 1)
    }
    assert record["data"]["train"]["size"] == 64 and record["data"]["test"]["size"] == 16
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [row["method"] for row in saved["summary"]] == ["constant", "anl"]
    assert saved["summary"][0]["train_step_x_constant"] == 1.0
    assert saved["timing"]["methods"]["constant"]["x_constant"] == 1.0
    assert len(saved["timing"]["methods"]["anl"]["samples_ms"]) == 2
    table = (tmp_path / "table.md").read_text()
    assert "| ANL |" in table and record["invocations"][0]["command"] in table
    assert (tmp_path / "weights.png").stat().st_size > 0

    # --resume keeps the finished runs (no training) and records the second invocation.
    try:
        again = multifashion.main([*args.split(), str(tmp_path), "--resume", "--no-timing"])
    finally:
        torch.set_num_threads(threads)
    assert again["runs"] == saved["runs"] and len(again["invocations"]) == 2
