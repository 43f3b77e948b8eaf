"""Counter-based randomness for attacks: batch-invariant and identical on every device.

An attack's random start or random search draws its numbers from a hash of ``(seed, sample
id, stream, position)`` rather than from a generator's state, so that the numbers an image
gets do not depend on the batch it sits in, on the batch size or on the number of ranks: a
sharded evaluation gives exactly the single-process result. The hash is the bijective 32-bit
"lowbias32" mixer; :func:`sample_keys` turns a seed and per-sample ids (e.g. dataset indices)
into one 32-bit key per sample, and :func:`keyed_bits`, :func:`keyed_uniform` and
:func:`keyed_noise` draw from those keys.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

_M32 = 0xFFFFFFFF


def _mul32(x: Tensor, c: int) -> Tensor:
    """``(x * c) mod 2**32`` for int64 ``x`` in [0, 2**32) without int64 overflow."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _M32


def _hash32(x: Tensor) -> Tensor:
    """A bijective 32-bit integer hash (the "lowbias32" mixer) on int64 tensors."""
    x = x & _M32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _hash32_int(x: int) -> int:
    """:func:`_hash32` on a Python int (no tensor, no device)."""
    x &= _M32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def sample_keys(
    seed: int, ids: Tensor | Sequence[int], device: torch.device, n: int | None = None
) -> Tensor:
    """One 32-bit key per sample from a base seed and per-sample ids (e.g. dataset indices)."""
    ids = torch.as_tensor(ids, dtype=torch.int64).to(device)
    if n is not None and tuple(ids.shape) != (n,):
        raise ValueError(
            "Parameter `sample_seeds` should hold one integer per image. "
            f"Found shape {tuple(ids.shape)} for {n} images."
        )
    return _hash32(_hash32(ids) ^ _hash32_int(seed ^ 0x5BD1E995))


def keyed_bits(keys: Tensor, stream: int, numel: int) -> Tensor:
    """``(len(keys), numel)`` pseudo-random 32-bit integers, a function of (key, stream, j)."""
    k = _hash32(keys ^ _hash32_int(stream))
    j = _hash32(torch.arange(numel, dtype=torch.int64, device=keys.device))
    return _hash32(k[:, None] ^ j[None, :])


def keyed_uniform(keys: Tensor, stream: int, numel: int) -> Tensor:
    """Uniform floats in [0, 1) with 24 random bits each."""
    return (keyed_bits(keys, stream, numel) >> 8).to(torch.float32) * 2.0**-24


def keyed_noise(keys: Tensor, shape: torch.Size, kind: str, stream: int = 0) -> Tensor:
    """Per-sample noise: ``U(-1, 1)`` ("uniform") or ``N(0, 1)`` by Box-Muller ("normal")."""
    numel = math.prod(shape[1:])
    if kind == "uniform":
        noise = 2.0 * keyed_uniform(keys, stream, numel) - 1.0
    else:
        u1 = keyed_uniform(keys, 2 * stream + 1, numel)
        u2 = keyed_uniform(keys, 2 * stream + 2, numel)
        noise = torch.sqrt(-2.0 * torch.log1p(-u1)) * torch.cos(2.0 * math.pi * u2)
    return noise.reshape(shape)
