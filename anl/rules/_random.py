r"""Counter-based random numbers: the draws of a rule's ``k``-th update are a pure function of
``(seed, k)``.

The random rules (:class:`~anl.rules.RandomLossWeighting`, :class:`~anl.rules.ReLoBRaLo`) keep
no generator object: their state holds only the counter ``k`` (the updates applied so far),
in the spirit of counter-based generators (Salmon et al., "Parallel random numbers: as easy as
1, 2, 3", SC 2011). That gives, at no cost:

- **no synchronisation**: the draws are integer tensor operations on the losses' device, so
  an accelerator never waits for the host (no CPU generator, no host-to-device copy);
- **masking without a trace**: a masked step leaves ``k`` unchanged, hence the randomness too,
  which a stateful generator cannot do without reading the validity back;
- **exact resume**: the state dict holds ``k`` (an int);
- **the same draws on every path and every rank**: host floats, CPU tensors, accelerators and
  every process of a distributed run draw the same numbers from the same seed, with no
  broadcast (the uniforms are bit-identical; normals agree to the last bits of ``log`` and
  ``cos``).

The generator, on 32-bit words, with :math:`\oplus` the exclusive or, :math:`s` the seed and
:math:`k` the counter split in low and high 32-bit halves, and :math:`c` a fixed salt:

.. math::

    \kappa_s = h(h(s_{lo} \oplus c) \oplus s_{hi}), \qquad
    \kappa_{s,k} = h(h(k_{lo} \oplus \kappa_s) \oplus k_{hi}), \qquad
    x_j = h(\kappa_{s,k} \oplus j) \quad (j = 0, 1, \dots)

where :math:`h` is the ``lowbias32`` integer hash (C. Wellons, "Prospecting for hash
functions", 2018: ``x ^= x >> 16; x *= 0x7feb352d; x ^= x >> 15; x *= 0x846ca68b;
x ^= x >> 16`` modulo :math:`2^{32}`), a bijection of 32-bit words with full avalanche.
:math:`u_j = (x_j + 1/2) / 2^{32}` is uniform on :math:`(0, 1)`; standard normals come from
pairs by Box-Muller, :math:`z_i = \sqrt{-2 \ln u_{2i}} \cos(2 \pi u_{2i+1})`. On tensors no
product reaches :math:`2^{63}` (the multipliers are split in 16-bit halves), so int64
arithmetic is exact on every device. :func:`anl.testing.oracles.counter_words` is an
independent NumPy version.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

_MASK = 0xFFFFFFFF
_MULTIPLIERS = (0x7FEB352D, 0x846CA68B)
_SEED_SALT = 0x243F6A88  # the first fraction bits of pi: seed 0 does not start from h(0) = 0
_SCALE = 2.0**-32


def _hash(x: int) -> int:
    x ^= x >> 16
    x = (x * _MULTIPLIERS[0]) & _MASK
    x ^= x >> 15
    x = (x * _MULTIPLIERS[1]) & _MASK
    return x ^ (x >> 16)


def _times(x: Tensor, multiplier: int) -> Tensor:
    """``x * multiplier`` modulo 2^32 for int64 ``x`` in [0, 2^32), with no product >= 2^48."""
    low, high = multiplier & 0xFFFF, multiplier >> 16
    return (x * low + (((x * high) & 0xFFFF) << 16)) & _MASK


def _hash_tensor(x: Tensor) -> Tensor:
    x = x ^ (x >> 16)
    x = _times(x, _MULTIPLIERS[0])
    x = x ^ (x >> 15)
    x = _times(x, _MULTIPLIERS[1])
    return x ^ (x >> 16)


def seed_key(seed: int) -> int:
    """The 32-bit key of a seed in [0, 2^64) (computed once per seed, except under
    ``torch.compile``, which traces the two hashes instead of a cache it would bypass)."""
    if torch.compiler.is_compiling():
        return _seed_key(seed)
    return _cached_seed_key(seed)


def _seed_key(seed: int) -> int:
    return _hash(_hash((seed & _MASK) ^ _SEED_SALT) ^ ((seed >> 32) & _MASK))


_cached_seed_key = functools.lru_cache(maxsize=64)(_seed_key)


def step_key(seed: int, counter: int | Tensor) -> int | Tensor:
    """The 32-bit key of the ``counter``-th update (an int, or an int64 0-dim tensor >= 0)."""
    key = seed_key(seed)
    if isinstance(counter, Tensor):
        return _hash_tensor(_hash_tensor((counter & _MASK) ^ key) ^ (counter >> 32))
    return _hash(_hash((counter & _MASK) ^ key) ^ (counter >> 32))


def words(seed: int, counter: int | Tensor, count: int) -> list[int] | Tensor:
    """The ``count`` 32-bit words of the ``counter``-th update: ``h(key ^ j)``, j = 0, 1, ..."""
    key = step_key(seed, counter)
    if isinstance(key, Tensor):
        return _hash_tensor(key ^ torch.arange(count, device=key.device))
    return [_hash(key ^ j) for j in range(count)]


def uniforms(
    seed: int, counter: int | Tensor, count: int, dtype: torch.dtype = torch.float64
) -> list[float] | Tensor:
    """``count`` uniforms on (0, 1): ``(x + 1/2) / 2^32`` (exact in float64)."""
    x = words(seed, counter, count)
    if isinstance(x, Tensor):
        return (x.to(dtype) + 0.5) * _SCALE
    return [(v + 0.5) * _SCALE for v in x]


def normals(
    seed: int, counter: int | Tensor, count: int, dtype: torch.dtype = torch.float64
) -> list[float] | Tensor:
    r"""``count`` standard normals by Box-Muller from ``2 count`` uniforms."""
    u = uniforms(seed, counter, 2 * count, dtype)
    if isinstance(u, Tensor):
        return torch.sqrt(-2.0 * torch.log(u[..., 0::2])) * torch.cos(
            (2.0 * math.pi) * u[..., 1::2]
        )
    return [
        math.sqrt(-2.0 * math.log(u[2 * i])) * math.cos((2.0 * math.pi) * u[2 * i + 1])
        for i in range(count)
    ]


def bernoulli_threshold(p: float) -> int:
    """The number of words ``x`` with ``(x + 1/2) / 2^32 < p``: ``x < threshold`` is a draw of
    Bernoulli(p) as an exact integer comparison (``p * 2^32 - 1/2`` is exact in float64)."""
    return min(max(math.ceil(p * 2.0**32 - 0.5), 0), 2**32)


def bernoulli(seed: int, counter: int | Tensor, p: float) -> bool | Tensor:
    """One Bernoulli(p) draw of the ``counter``-th update: ``u < p`` with ``u`` its first uniform."""
    x = words(seed, counter, 1)
    return (x[..., 0] if isinstance(x, Tensor) else x[0]) < bernoulli_threshold(p)
