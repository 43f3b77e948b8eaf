"""L-infinity attacks used to train and evaluate the MTARD students.

Every attack takes images in ``[0, 1]`` (NCHW, float) and returns a *detached* ``x_adv`` with

.. math::

    \\|x_{adv} - x\\|_\\infty \\le \\epsilon, \\qquad 0 \\le x_{adv} \\le 1 .

Gradients are taken with respect to the input only (``torch.autograd.grad(loss, [x_adv])``):
the model's parameters never receive a ``.grad`` and their ``requires_grad`` flags are left
alone. The model's train/eval mode is set for the attack and restored afterwards, also when
the attack raises.

White-box attacks (Zhao et al., ECCV 2022, Sec. 4.1, and the official TRADES/RSLAD code):

- :func:`pgd`: projected sign-gradient ascent (Madry et al. 2018),
  :math:`x_{k+1} = \\Pi_{[0,1]}\\Pi_{B_\\epsilon(x)}(x_k + \\alpha\\,\\mathrm{sign}(\\nabla_x L))`,
  on the cross-entropy, the CW margin or any summed loss; it is also the training attack.
- :func:`fgsm`: one step of size :math:`\\epsilon` from :math:`x`.
- :func:`cw_inf`: PGD on the CW margin loss with confidence 50.

Black-box attacks: :func:`square` (Andriushchenko et al., ECCV 2020, L-infinity version with
AutoAttack's schedule), :func:`transfer` (crafted on a surrogate) and :func:`autoattack`
(Croce & Hein 2020, through the optional ``pyautoattack`` package).

:data:`ATTACKS` maps the evaluation names to factories that apply the paper's protocol
(:func:`protocol`).

Randomness. :func:`pgd` draws its random start from ``generator`` (or torch's global
generator) unless ``sample_seeds`` is given; :func:`square` and the attacks built by
:data:`ATTACKS` draw from a counter-based hash keyed by ``(seed, sample id)``. The latter makes
an attack's output for an image independent of the batch it sits in, of the batch size and
of the number of ranks, so a sharded evaluation gives exactly the single-process result.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ATTACKS",
    "ATTACK_NAMES",
    "DEFAULT_EPS",
    "Attack",
    "autoattack",
    "cw_inf",
    "cw_margin_loss",
    "fgsm",
    "make_attack",
    "model_mode",
    "pgd",
    "protocol",
    "square",
    "transfer",
]

DEFAULT_EPS = 8 / 255
"""The paper's budget on CIFAR (L-infinity, inputs in [0, 1])."""

ModelMode = Literal["eval", "train"] | None
StartKind = Literal["uniform", "normal"] | None
LossFn = Callable[[Tensor, Tensor], Tensor]


# --------------------------------------------------------------------------------------------
# Validation and model-mode handling
# --------------------------------------------------------------------------------------------


def _check_nonnegative(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(
            f"Parameter `{name}` should be a non-negative number. Found `{name} = {value!r}`."
        )


def _check_count(name: str, value: int, minimum: int = 0) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(
            f"Parameter `{name}` should be an integer >= {minimum}. Found `{name} = {value!r}`."
        )


def _check_inputs(x: Tensor, y: Tensor | None = None) -> None:
    if not isinstance(x, Tensor) or x.dim() < 2 or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(
            "Parameter `x` should be a floating-point batch of shape (N, ...). "
            f"Found `x.shape = {shape}`."
        )
    if y is not None and isinstance(y, Tensor) and (y.dim() == 0 or y.shape[0] != x.shape[0]):
        raise ValueError(
            "Parameter `y` should have one entry per image. "
            f"Found `y.shape = {tuple(y.shape)}` for `x.shape = {tuple(x.shape)}`."
        )


def _check_mode(mode: ModelMode) -> None:
    if mode not in ("eval", "train", None):
        raise ValueError(
            f'Parameter `model_mode` should be "eval", "train" or None. Found `model_mode = {mode!r}`.'
        )


@contextmanager
def model_mode(model: nn.Module, mode: ModelMode) -> Iterator[nn.Module]:
    """Put ``model`` in ``mode`` ("eval", "train"; None leaves it alone) for a block.

    The ``training`` flag of every submodule is recorded and restored on exit, also when
    the block raises, so mixed modes (e.g. frozen BatchNorm layers) survive.
    """
    _check_mode(mode)
    if mode is None:
        yield model
        return
    saved = [(module, module.training) for module in model.modules()]
    try:
        model.train(mode == "train")
        yield model
    finally:
        for module, training in saved:
            module.training = training


_mode = model_mode  # the functions below take a `model_mode` keyword that shadows the name


# --------------------------------------------------------------------------------------------
# Counter-based randomness (batch-invariant, identical on every device)
# --------------------------------------------------------------------------------------------

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


def _sample_keys(
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


def _keyed_bits(keys: Tensor, stream: int, numel: int) -> Tensor:
    """``(len(keys), numel)`` pseudo-random 32-bit integers, a function of (key, stream, j)."""
    k = _hash32(keys ^ _hash32_int(stream))
    j = _hash32(torch.arange(numel, dtype=torch.int64, device=keys.device))
    return _hash32(k[:, None] ^ j[None, :])


def _keyed_uniform(keys: Tensor, stream: int, numel: int) -> Tensor:
    """Uniform floats in [0, 1) with 24 random bits each."""
    return (_keyed_bits(keys, stream, numel) >> 8).to(torch.float32) * 2.0**-24


def _keyed_noise(keys: Tensor, shape: torch.Size, kind: str, stream: int = 0) -> Tensor:
    """Per-sample noise: ``U(-1, 1)`` ("uniform") or ``N(0, 1)`` by Box-Muller ("normal")."""
    numel = math.prod(shape[1:])
    if kind == "uniform":
        noise = 2.0 * _keyed_uniform(keys, stream, numel) - 1.0
    else:
        u1 = _keyed_uniform(keys, 2 * stream + 1, numel)
        u2 = _keyed_uniform(keys, 2 * stream + 2, numel)
        noise = torch.sqrt(-2.0 * torch.log1p(-u1)) * torch.cos(2.0 * math.pi * u2)
    return noise.reshape(shape)


# --------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------


def cw_margin_loss(logits: Tensor, y: Tensor, confidence: float = 50.0) -> Tensor:
    """The CW objective maximised by the official TRADES/RSLAD ``cwloss`` code.

    .. math::

        L(z, y) = -\\sum_i \\max\\big(z_{i,y_i} - \\max_{j \\ne y_i} z_{i,j} + \\kappa,\\ 0\\big)

    with :math:`\\kappa` = ``confidence``. Ascent on :math:`L` pushes the margin
    :math:`\\max_{j\\ne y} z_j - z_y` up until it reaches :math:`\\kappa`.
    """
    real = logits.gather(1, y[:, None]).squeeze(1)
    mask = F.one_hot(y, logits.shape[1]).bool()
    other = logits.masked_fill(mask, float("-inf")).max(dim=1).values
    return -torch.clamp(real - other + confidence, min=0.0).sum()


def _ce_sum(logits: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(logits, y, reduction="sum")


def _resolve_loss(loss: str | LossFn, confidence: float) -> LossFn:
    if callable(loss):
        return loss
    if loss == "ce":
        return _ce_sum
    if loss == "cw":
        return lambda logits, y: cw_margin_loss(logits, y, confidence)
    raise ValueError(
        f'Parameter `loss` should be "ce", "cw" or a callable. Found `loss = {loss!r}`.'
    )


# --------------------------------------------------------------------------------------------
# White-box attacks
# --------------------------------------------------------------------------------------------


def _project(x_adv: Tensor, x: Tensor, eps: float) -> Tensor:
    """Project onto the eps-ball around ``x``, then onto the box [0, 1]."""
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp_(0.0, 1.0)


def pgd(
    model: nn.Module,
    x: Tensor,
    y_or_target: Tensor,
    *,
    eps: float,
    step_size: float,
    steps: int,
    loss: Literal["ce", "cw"] | LossFn = "ce",
    random_start: StartKind = "uniform",
    start_std: float = 0.001,
    clamp_start: bool = True,
    model_mode: ModelMode = "eval",
    confidence: float = 50.0,
    generator: torch.Generator | None = None,
    sample_seeds: Tensor | Sequence[int] | None = None,
) -> Tensor:
    """L-infinity projected gradient ascent with sign steps (Madry et al. 2018).

    .. math::

        x_0 = x + \\delta_0, \\qquad
        x_{k+1} = \\mathrm{clip}_{[0,1]}\\Big(\\Pi_{\\|\\cdot - x\\|_\\infty \\le \\epsilon}
        \\big(x_k + \\alpha\\,\\mathrm{sign}\\,\\nabla_{x_k} L(f(x_k), t)\\big)\\Big)

    - :math:`\\delta_0`: ``U(-eps, eps)`` ("uniform"), ``start_std * N(0, 1)`` ("normal", the
      TRADES/RSLAD/MTARD training start) or 0 (None); clipped to [0, 1] only if
      ``clamp_start`` (the official MTARD and TRADES codes do not clip the start).
    - :math:`\\alpha` = ``step_size``, ``steps`` iterations.
    - :math:`L`: ``"ce"`` (cross-entropy summed over the batch), ``"cw"``
      (:func:`cw_margin_loss` with ``confidence``) or ``callable(logits, target) -> scalar``;
      :math:`t` = ``y_or_target`` is passed to it as is (labels, or e.g. clean logits).

    The loop never synchronises host and device. ``generator`` seeds the random start; with
    ``sample_seeds`` (one integer per image, e.g. dataset indices) the start of each image is
    a function of its seed alone, whatever the batch.

    MTARD's student attack (official code)::

        pgd(student, x, y, eps=8/255, step_size=2/255, steps=10, random_start="normal",
            start_std=0.001, clamp_start=False, model_mode="eval")

    Returns:
        The detached adversarial batch, in [0, 1] and within ``eps`` of ``x``.
    """
    _check_inputs(x, y_or_target if not callable(loss) else None)
    _check_nonnegative("eps", eps)
    _check_nonnegative("step_size", step_size)
    _check_nonnegative("start_std", start_std)
    _check_count("steps", steps)
    _check_mode(model_mode)
    if random_start not in ("uniform", "normal", None):
        raise ValueError(
            'Parameter `random_start` should be "uniform", "normal" or None. '
            f"Found `random_start = {random_start!r}`."
        )
    loss_fn = _resolve_loss(loss, confidence)
    x = x.detach()

    if random_start is None:
        x_adv = x.clone()
    else:
        scale = eps if random_start == "uniform" else start_std
        if sample_seeds is not None:
            keys = _sample_keys(0, sample_seeds, x.device, x.shape[0])
            noise = scale * _keyed_noise(keys, x.shape, random_start).to(x.dtype)
        elif random_start == "uniform":
            noise = torch.empty_like(x).uniform_(-eps, eps, generator=generator)
        else:
            noise = start_std * torch.randn(
                x.shape, generator=generator, device=x.device, dtype=x.dtype
            )
        x_adv = x + noise
        if clamp_start:
            x_adv = x_adv.clamp(0.0, 1.0)

    with _mode(model, model_mode), torch.enable_grad():
        for _ in range(steps):
            x_adv = x_adv.detach().requires_grad_(True)
            value = loss_fn(model(x_adv), y_or_target)
            (grad,) = torch.autograd.grad(value, [x_adv])
            x_adv = _project(x_adv.detach() + step_size * grad.sign(), x, eps)
    # Idempotent after a step; keeps the contract for steps == 0 too.
    return _project(x_adv.detach(), x, eps)


def fgsm(
    model: nn.Module, x: Tensor, y: Tensor, *, eps: float, model_mode: ModelMode = "eval"
) -> Tensor:
    """Fast Gradient Sign Method (Goodfellow et al. 2015): one step of size ``eps`` from ``x``.

    .. math:: x_{adv} = \\mathrm{clip}_{[0,1]}\\big(x + \\epsilon\\,\\mathrm{sign}\\,\\nabla_x
        \\mathrm{CE}(f(x), y)\\big)
    """
    return pgd(
        model,
        x,
        y,
        eps=eps,
        step_size=eps,
        steps=1,
        loss="ce",
        random_start=None,
        model_mode=model_mode,
    )


def cw_inf(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    step_size: float,
    steps: int = 30,
    confidence: float = 50.0,
    random_start: StartKind = "uniform",
    clamp_start: bool = False,
    model_mode: ModelMode = "eval",
    generator: torch.Generator | None = None,
    sample_seeds: Tensor | Sequence[int] | None = None,
) -> Tensor:
    """CW-infinity: :func:`pgd` on :func:`cw_margin_loss` (official TRADES/RSLAD evaluation).

    The official code starts from ``x + U(-eps, eps)`` without clipping the start, then takes
    ``steps`` sign steps of ``step_size`` (paper: 30 steps of 2/255, confidence 50).
    """
    return pgd(
        model,
        x,
        y,
        eps=eps,
        step_size=step_size,
        steps=steps,
        loss="cw",
        random_start=random_start,
        clamp_start=clamp_start,
        model_mode=model_mode,
        confidence=confidence,
        generator=generator,
        sample_seeds=sample_seeds,
    )


# --------------------------------------------------------------------------------------------
# Square Attack (L-infinity)
# --------------------------------------------------------------------------------------------

# AutoAttack's p schedule for 5000 queries: p = p_init / 2**k after iteration t_k.
_SQUARE_SCHEDULE = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
_SQUARE_REFERENCE_QUERIES = 5000


def _square_fraction(iteration: int, n_queries: int, p_init: float) -> float:
    """Fraction ``p`` of the image covered by the square at ``iteration`` (0-based).

    AutoAttack (``resc_schedule=False`` in its standard version) halves ``p`` after
    iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 with a 5000-query budget.
    Other budgets stretch the same schedule proportionally: the iteration is mapped to
    ``int(iteration * 5000 / n_queries)``, so 5000 queries reproduce AutoAttack exactly.
    """
    t = int(iteration * _SQUARE_REFERENCE_QUERIES / n_queries)
    halvings = sum(t > threshold for threshold in _SQUARE_SCHEDULE)
    return p_init / 2**halvings


def _margin(logits: Tensor, y: Tensor) -> Tensor:
    """Per-sample margin ``z_y - max_{j != y} z_j`` (negative iff misclassified)."""
    real = logits.gather(1, y[:, None]).squeeze(1)
    mask = F.one_hot(y, logits.shape[1]).bool()
    return real - logits.masked_fill(mask, float("-inf")).max(dim=1).values


def square(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    n_queries: int = 5000,
    p_init: float = 0.8,
    seed: int = 0,
    progress: bool = False,
    model_mode: ModelMode = "eval",
    sample_seeds: Tensor | Sequence[int] | None = None,
    return_queries: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Square Attack, L-infinity (Andriushchenko et al., ECCV 2020), score-based black box.

    Minimises the margin :math:`m(x) = z_y(x) - \\max_{j\\ne y} z_j(x)` by random search:

    1. Start from vertical stripes: :math:`x_0 = \\mathrm{clip}_{[0,1]}(x + \\epsilon\\,s)`,
       :math:`s \\in \\{-1, 1\\}^{C \\times 1 \\times W}` random per image.
    2. At iteration :math:`i`, for every image still classified correctly, pick a square of
       side :math:`h_i = \\max(1, \\mathrm{round}(\\sqrt{p_i H W}))` at a random position and
       set it, per channel, to :math:`\\mathrm{clip}_{[0,1]}(x \\pm \\epsilon)` (a vertex of
       the ball); keep the candidate if its margin is lower.
    3. :math:`p_i` follows AutoAttack's schedule from ``p_init`` (:func:`_square_fraction`).

    Only images that are still classified correctly are queried; images misclassified from
    the start are returned unchanged. Each attacked image costs at most ``n_queries`` model
    evaluations (the stripes start counts as one; AutoAttack counts ``n_queries`` iterations
    after it), not counting the clean prediction. Square positions include the last row and
    column (AutoAttack's sampler omits them). Randomness comes from a counter-based hash of
    ``(seed, sample_seeds[i], iteration)``, so results do not depend on the batch.

    Returns:
        ``x_adv``, or ``(x_adv, queries)`` with ``return_queries`` (int64 per image).
    """
    _check_inputs(x, y)
    _check_nonnegative("eps", eps)
    _check_count("n_queries", n_queries, minimum=1)
    if not 0.0 < p_init <= 1.0:
        raise ValueError(f"Parameter `p_init` should be in (0, 1]. Found `p_init = {p_init!r}`.")
    if x.dim() != 4:
        raise ValueError(f"Parameter `x` should be NCHW. Found `x.shape = {tuple(x.shape)}`.")
    from tqdm.auto import tqdm

    x = x.detach()
    n, c, h, w = x.shape
    device = x.device
    ids = torch.arange(n) if sample_seeds is None else sample_seeds
    keys = _sample_keys(seed, ids, device, n)
    queries = torch.zeros(n, dtype=torch.int64, device=device)
    rows = torch.arange(h, device=device)
    cols = torch.arange(w, device=device)

    with _mode(model, model_mode), torch.no_grad():
        x_best = x.clone()
        correct = model(x).argmax(dim=1) == y
        todo = correct.nonzero().squeeze(1)
        if todo.numel() > 0:
            # Stripes initialisation (stream 0).
            signs = (_keyed_bits(keys[todo], 0, c * w) & 1).to(x.dtype) * 2 - 1
            start = (x[todo] + eps * signs.reshape(-1, c, 1, w)).clamp(0.0, 1.0)
            x_best[todo] = start
            margin = torch.full((n,), float("-inf"), device=device)
            margin[todo] = _margin(model(start), y[todo])
            queries[todo] = 1
            bar = tqdm(range(n_queries - 1), desc="square", disable=not progress, leave=False)
            for it in bar:
                active = (margin > 0).nonzero().squeeze(1)
                if active.numel() == 0:
                    break
                p = _square_fraction(it, n_queries, p_init)
                s = min(max(round(math.sqrt(p * h * w)), 1), h, w)
                bits = _keyed_bits(keys[active], it + 1, 2 + c)
                vh = (bits[:, 0] % (h - s + 1))[:, None]
                vw = (bits[:, 1] % (w - s + 1))[:, None]
                in_rows = (rows[None] >= vh) & (rows[None] < vh + s)
                in_cols = (cols[None] >= vw) & (cols[None] < vw + s)
                window = in_rows[:, None, :, None] & in_cols[:, None, None, :]
                corner = (bits[:, 2:] & 1).to(x.dtype) * 2 - 1
                x_curr = x[active]
                vertex = (x_curr + eps * corner[:, :, None, None]).clamp(0.0, 1.0)
                candidate = torch.where(window, vertex, x_best[active])
                new_margin = _margin(model(candidate), y[active])
                queries[active] += 1
                better = new_margin < margin[active]
                x_best[active] = torch.where(better[:, None, None, None], candidate, x_best[active])
                margin[active] = torch.where(better, new_margin, margin[active])
                if progress:
                    bar.set_postfix(remaining=int(active.numel()))
            bar.close()
        x_adv = _project(x_best, x, eps)
    if return_queries:
        return x_adv, queries
    return x_adv


# --------------------------------------------------------------------------------------------
# Transfer and AutoAttack
# --------------------------------------------------------------------------------------------


def transfer(
    surrogate: nn.Module,
    target: nn.Module,
    x: Tensor,
    y: Tensor,
    attack: Callable[[nn.Module, Tensor, Tensor], Tensor],
) -> Tensor:
    """Transfer attack: ``attack(surrogate, x, y)``; the target is never queried.

    ``target`` is the model the examples will be evaluated on; it is part of the signature
    so that a transfer attack reads like the others, and must differ from ``surrogate``
    (otherwise the attack is white-box).
    """
    if surrogate is target:
        raise ValueError(
            "Parameter `surrogate` should be a different model from `target`. "
            "Found `surrogate is target`."
        )
    return attack(surrogate, x, y).detach()


def autoattack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    version: Literal["standard", "plus", "rand", "custom"] = "standard",
    device: torch.device | str | None = None,
    batch_size: int = 500,
    attacks: Sequence[str] | None = None,
    seed: int = 0,
    square_queries: int | None = None,
    model_mode: ModelMode = "eval",
) -> Tensor:
    """AutoAttack, L-infinity (Croce & Hein, ICML 2020), through ``pyautoattack``.

    ``version="standard"`` runs APGD-CE, APGD-T, FAB-T and Square (5000 queries) and keeps the
    worst case per point; ``"custom"`` runs ``attacks`` (e.g. ``["apgd-ce", "apgd-t"]``).
    ``device`` defaults to ``x.device`` (the package's own default is the CPU). With fewer
    than 10 classes the targeted attacks use every other class (``C - 1`` targets) instead
    of 9, which would index out of range; with fewer than 4 classes APGD-T (whose DLR loss
    needs 4 logits) is dropped from the preset versions with a warning and refused in
    ``"custom"``. ``square_queries`` overrides Square's budget. The package seeds torch's
    global generator (``seed``), as the official code does.
    """
    try:
        import pyautoattack
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "autoattack needs the optional package `pyautoattack`: "
            "pip install anl[autoattack]  (or: pip install pyautoattack==0.2.0)"
        ) from exc
    _check_inputs(x, y)
    _check_nonnegative("eps", eps)
    _check_count("batch_size", batch_size, minimum=1)
    if version == "custom" and not attacks:
        raise ValueError(
            'Parameter `attacks` should list the attacks to run with version="custom". '
            f"Found `attacks = {attacks!r}`."
        )
    if version != "custom" and attacks is not None:
        raise ValueError(
            'Parameter `attacks` should be None unless version="custom". '
            f"Found `attacks = {attacks!r}` with `version = {version!r}`."
        )
    device = x.device if device is None else torch.device(device)
    with _mode(model, model_mode):
        with torch.no_grad():
            num_classes = model(x[:1].to(device)).shape[1]
        adversary = pyautoattack.AutoAttack(
            model,
            attacks=list(attacks) if attacks is not None else None,
            device=device,
            eps=eps,
            norm="Linf",
            seed=seed,
            version=version,
        )
        adversary.verbose = False
        if num_classes < 4 and "apgd-t" in adversary.attacks_to_run:
            # APGD-T's targeted DLR loss reads the 4th-largest logit.
            if version == "custom":
                raise ValueError(
                    "Parameter `attacks` should not include 'apgd-t' for a model with fewer "
                    f"than 4 classes. Found `attacks = {list(attacks or [])}` with "
                    f"{num_classes} classes."
                )
            warnings.warn(
                f"AutoAttack: APGD-T needs at least 4 classes; running {version!r} without "
                f"it on this {num_classes}-class model.",
                stacklevel=2,
            )
            adversary.attacks_to_run = [a for a in adversary.attacks_to_run if a != "apgd-t"]
        n_targets = min(9, num_classes - 1)
        adversary.apgd_targeted.n_target_classes = min(
            adversary.apgd_targeted.n_target_classes, n_targets
        )
        adversary.fab.n_target_classes = min(adversary.fab.n_target_classes, n_targets)
        if square_queries is not None:
            _check_count("square_queries", square_queries, minimum=1)
            adversary.square.n_queries = square_queries
        x_adv, _ = adversary.run_standard_evaluation(
            x.detach().to(device), y.to(device), batch_size=batch_size
        )
    return _project(x_adv.to(x.device).detach(), x.detach(), eps)


# --------------------------------------------------------------------------------------------
# The evaluation protocol and the registry
# --------------------------------------------------------------------------------------------

ATTACK_NAMES = (
    "fgsm",
    "pgd_sat",
    "pgd_trades",
    "cw_inf",
    "square",
    "transfer_pgd",
    "transfer_cw",
    "autoattack",
)


def protocol(eps: float = DEFAULT_EPS) -> dict[str, dict[str, Any]]:
    """The paper's evaluation settings (Sec. 4.1, official code) for budget ``eps``.

    At ``eps = 8/255`` (CIFAR):

    ============  ==============================================================
    fgsm          one step of size eps
    pgd_sat       20 steps of 2/255, start ``U(-eps, eps)``, CE
    pgd_trades    20 steps of 0.003, start ``0.001 * N(0, 1)``, CE
    cw_inf        30 steps of 2/255 on the CW margin (confidence 50), ``U(-eps, eps)`` start
    square        5000 queries, p_init 0.8
    transfer_pgd  pgd_trades crafted on a surrogate (the adversarial teacher)
    transfer_cw   cw_inf crafted on a surrogate
    autoattack    AutoAttack "standard" (not in the paper)
    ============  ==============================================================

    Other budgets (e.g. 0.1 on Fashion-MNIST) keep the step-to-budget ratios: step sizes
    ``eps / 4`` (SAT, CW) and ``0.003 * eps / (8/255)`` (TRADES). The paper's text gives
    2/255 for PGD_TRADES; the TRADES evaluation code it follows (``_pgd_whitebox``) uses 0.003
    and, as MTARD's ``attack_pgd``, starts from ``U(-eps, eps)``. Random starts are not
    clipped to [0, 1], as in that code.
    """
    _check_nonnegative("eps", eps)
    ratio = eps / DEFAULT_EPS
    pgd_sat = {
        "eps": eps,
        "steps": 20,
        "step_size": eps / 4,
        "loss": "ce",
        "random_start": "uniform",
        "clamp_start": False,
    }
    pgd_trades = {
        "eps": eps,
        "steps": 20,
        "step_size": 0.003 * ratio,
        "loss": "ce",
        "random_start": "uniform",
        "clamp_start": False,
    }
    cw = {
        "eps": eps,
        "steps": 30,
        "step_size": eps / 4,
        "loss": "cw",
        "confidence": 50.0,
        "random_start": "uniform",
        "clamp_start": False,
    }
    return {
        "fgsm": {"eps": eps},
        "pgd_sat": pgd_sat,
        "pgd_trades": pgd_trades,
        "cw_inf": cw,
        "square": {"eps": eps, "n_queries": 5000, "p_init": 0.8},
        "transfer_pgd": dict(pgd_trades),
        "transfer_cw": dict(cw),
        "autoattack": {"eps": eps, "version": "standard", "batch_size": 500},
    }


_PGD_KEYS = {"eps", "steps", "step_size", "random_start", "start_std", "clamp_start", "loss"}
_ALLOWED = {
    "fgsm": {"eps"},
    "pgd_sat": _PGD_KEYS,
    "pgd_trades": _PGD_KEYS,
    "cw_inf": _PGD_KEYS | {"confidence"},
    "square": {"eps", "n_queries", "p_init"},
    "transfer_pgd": _PGD_KEYS,
    "transfer_cw": _PGD_KEYS | {"confidence"},
    "autoattack": {"eps", "version", "batch_size", "attacks", "square_queries", "device"},
}


class Attack:
    """An evaluation attack with fixed settings: ``attack(model, x, y, seeds=None) -> x_adv``.

    ``seeds`` (one integer per image, e.g. its dataset index) keys the randomness so that an
    image gets the same random start wherever it is evaluated; by default the position in
    the batch is used. ``settings`` records everything needed to reproduce the attack.
    """

    def __init__(
        self,
        name: str,
        settings: dict[str, Any],
        *,
        seed: int = 0,
        surrogate: nn.Module | None = None,
        progress: bool = False,
    ) -> None:
        self.name = name
        self.settings = dict(settings)
        self.seed = seed
        self.surrogate = surrogate
        self.progress = progress

    @property
    def is_transfer(self) -> bool:
        return self.name.startswith("transfer_")

    def __repr__(self) -> str:
        return f"Attack({self.name!r}, {self.settings!r}, seed={self.seed})"

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, *, seeds: Tensor | None = None
    ) -> Tensor:
        ids = torch.arange(x.shape[0]) if seeds is None else torch.as_tensor(seeds)
        # Fold the attack seed into the per-sample seeds (pgd's keyed start uses seed 0).
        sample_seeds = _sample_keys(self.seed, ids, x.device, x.shape[0])
        kw = dict(self.settings)
        if self.name == "fgsm":
            return fgsm(model, x, y, eps=kw["eps"])
        if self.name == "square":
            return square(
                model, x, y, seed=self.seed, progress=self.progress, sample_seeds=ids, **kw
            )
        if self.name == "autoattack":
            return autoattack(model, x, y, seed=self.seed, **kw)
        if self.is_transfer:
            surrogate = self.surrogate
            if surrogate is None:
                raise ValueError(
                    f"Parameter `surrogate` should be a model for attack {self.name!r}. "
                    "Found `surrogate = None`."
                )

            def craft(m: nn.Module, xb: Tensor, yb: Tensor) -> Tensor:
                return pgd(m, xb, yb, sample_seeds=sample_seeds, **kw)

            return transfer(surrogate, model, x, y, craft)
        return pgd(model, x, y, sample_seeds=sample_seeds, **kw)


def make_attack(
    name: str,
    *,
    eps: float = DEFAULT_EPS,
    seed: int = 0,
    surrogate: nn.Module | None = None,
    progress: bool = False,
    **overrides: Any,
) -> Attack:
    """Build the evaluation attack ``name`` with the settings of :func:`protocol` (``eps``).

    ``overrides`` replace single settings (e.g. ``steps=50``, ``n_queries=1000``); unknown
    names raise a ``ValueError``. ``transfer_*`` attacks need ``surrogate``.
    """
    if name not in ATTACK_NAMES:
        raise ValueError(
            f"Parameter `name` should be one of {ATTACK_NAMES}. Found `name = {name!r}`."
        )
    unknown = sorted(set(overrides) - _ALLOWED[name])
    if unknown:
        raise ValueError(
            f"Parameter `overrides` should only set {sorted(_ALLOWED[name])} for attack "
            f"{name!r}. Found `overrides = {unknown}`."
        )
    if name.startswith("transfer_") and surrogate is None:
        raise ValueError(
            f"Parameter `surrogate` should be a model for attack {name!r}. Found `surrogate = None`."
        )
    settings = protocol(eps)[name]
    settings.update(overrides)
    return Attack(name, settings, seed=seed, surrogate=surrogate, progress=progress)


def _factory(name: str) -> Callable[..., Attack]:
    def build(**kwargs: Any) -> Attack:
        return make_attack(name, **kwargs)

    build.__name__ = f"make_{name}"
    build.__doc__ = f"``make_attack({name!r}, **kwargs)``: see :func:`make_attack`."
    return build


ATTACKS: dict[str, Callable[..., Attack]] = {name: _factory(name) for name in ATTACK_NAMES}
"""Evaluation attacks by name: ``ATTACKS["pgd_sat"](eps=0.1)(model, x, y)``."""
