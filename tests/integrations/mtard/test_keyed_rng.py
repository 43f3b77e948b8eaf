"""The keyed randomness of the attacks (anl.integrations.mtard.attacks.keyed_rng) against a
plain-Python reference: the "lowbias32" hash (Wellons's published mixer) on integers, the key
derivation, the bits, the uniforms and the Box-Muller normals, value for value. The attacks'
random starts and Square's search are a function of these numbers, so any change to them
changes every published robustness figure; the distributions are checked too."""

from __future__ import annotations

import math

import pytest
import torch

from anl.integrations.mtard.attacks.keyed_rng import (
    keyed_bits,
    keyed_noise,
    keyed_uniform,
    sample_keys,
)

M32 = 0xFFFFFFFF
IDS = [0, 1, 2, 7, 12345, 2**31 - 1, 2**31, 2**32 - 1, 2**40 + 5, -1]


def lowbias32(x: int) -> int:
    """https://nullprogram.com/blog/2018/07/31/ (Chris Wellons), in plain Python integers."""
    x &= M32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & M32
    return x ^ (x >> 16)


def reference_key(seed: int, sample_id: int) -> int:
    return lowbias32(lowbias32(sample_id) ^ lowbias32(seed ^ 0x5BD1E995))


def reference_bits(key: int, stream: int, j: int) -> int:
    return lowbias32(lowbias32(key ^ lowbias32(stream)) ^ lowbias32(j))


def reference_uniform(key: int, stream: int, j: int) -> float:
    return (reference_bits(key, stream, j) >> 8) / 2.0**24


def test_the_hash_is_lowbias32():
    assert lowbias32(0) == 0 and lowbias32(1) != 1  # sanity of the reference itself
    ids = torch.tensor(IDS, dtype=torch.int64)
    for seed in (0, 1, 4, 2**32 + 3, 0x5BD1E995):
        keys = sample_keys(seed, ids, torch.device("cpu"))
        assert keys.dtype == torch.int64
        assert keys.tolist() == [reference_key(seed, i) for i in IDS]
        assert all(0 <= k <= M32 for k in keys.tolist())


def test_keys_take_a_sequence_and_check_the_count():
    keys = sample_keys(3, [5, 6], torch.device("cpu"), 2)
    assert keys.tolist() == [reference_key(3, 5), reference_key(3, 6)]
    with pytest.raises(ValueError, match="`sample_seeds` should hold one integer per image"):
        sample_keys(3, [5, 6], torch.device("cpu"), 3)
    with pytest.raises(ValueError, match=r"Found shape \(2, 1\) for 2 images"):
        sample_keys(3, [[5], [6]], torch.device("cpu"), 2)


@pytest.mark.parametrize("stream", [0, 1, 3, 4999])
def test_bits_and_uniforms_match_the_reference(stream):
    keys = sample_keys(9, torch.tensor(IDS), torch.device("cpu"))
    bits = keyed_bits(keys, stream, 5)
    assert bits.shape == (len(IDS), 5)
    expected = [[reference_bits(k, stream, j) for j in range(5)] for k in keys.tolist()]
    assert bits.tolist() == expected
    uniforms = keyed_uniform(keys, stream, 5)
    assert uniforms.dtype == torch.float32
    assert uniforms.tolist() == [
        [reference_uniform(k, stream, j) for j in range(5)] for k in keys.tolist()
    ]


def test_noise_matches_the_reference():
    keys = sample_keys(2, torch.arange(4), torch.device("cpu"))
    shape = torch.Size((4, 2, 3))
    for stream in (0, 2):
        uniform = keyed_noise(keys, shape, "uniform", stream=stream)
        assert uniform.shape == shape
        expected = [
            [2.0 * reference_uniform(k, stream, j) - 1.0 for j in range(6)] for k in keys.tolist()
        ]
        assert uniform.reshape(4, 6).tolist() == expected  # exact in float32
        normal = keyed_noise(keys, shape, "normal", stream=stream)
        assert normal.shape == shape and normal.dtype == torch.float32
        expected = [
            [
                math.sqrt(-2.0 * math.log1p(-reference_uniform(k, 2 * stream + 1, j)))
                * math.cos(2.0 * math.pi * reference_uniform(k, 2 * stream + 2, j))
                for j in range(6)
            ]
            for k in keys.tolist()
        ]
        torch.testing.assert_close(
            normal.reshape(4, 6).double(), torch.tensor(expected, dtype=torch.float64),
            rtol=1e-5, atol=1e-5,
        )  # fmt: skip
    # The default stream is 0.
    assert torch.equal(keyed_noise(keys, shape, "normal"), keyed_noise(keys, shape, "normal", 0))


def test_noise_distributions():
    keys = sample_keys(0, torch.arange(64), torch.device("cpu"))
    shape = torch.Size((64, 32, 32))
    uniform = keyed_noise(keys, shape, "uniform")
    assert float(uniform.min()) >= -1.0 and float(uniform.max()) < 1.0
    assert float(uniform.min()) < -0.999 and float(uniform.max()) > 0.999
    assert float(uniform.mean()) == pytest.approx(0.0, abs=0.01)
    assert float(uniform.std()) == pytest.approx(1 / 3**0.5, rel=0.01)
    normal = keyed_noise(keys, shape, "normal")
    assert float(normal.mean()) == pytest.approx(0.0, abs=0.01)
    assert float(normal.std()) == pytest.approx(1.0, rel=0.01)
    assert float((normal.abs() > 1).float().mean()) == pytest.approx(0.3173, abs=0.005)
    assert float((normal.abs() > 3).float().mean()) == pytest.approx(0.0027, abs=0.0008)
    # Each image draws its own numbers; the streams are independent.
    assert not torch.equal(uniform[0], uniform[1])
    assert not torch.equal(keyed_noise(keys, shape, "uniform", 1), uniform)
