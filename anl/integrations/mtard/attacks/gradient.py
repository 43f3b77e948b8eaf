"""White-box attacks: projected sign-gradient ascent and its special cases.

Every attack takes images in ``[0, 1]`` (NCHW, float) and returns a *detached* ``x_adv`` with

.. math::

    \\|x_{adv} - x\\|_\\infty \\le \\epsilon, \\qquad 0 \\le x_{adv} \\le 1 .

Gradients are taken with respect to the input only (``torch.autograd.grad(loss, [x_adv])``):
the model's parameters never receive a ``.grad`` and their ``requires_grad`` flags are left
alone. The model's train/eval mode is set for the attack and restored afterwards, also when
the attack raises (:func:`~..runtime.execution.model_mode`).

Zhao et al., ECCV 2022, Sec. 4.1, and the official TRADES/RSLAD code:

- :func:`pgd`: projected sign-gradient ascent (Madry et al. 2018),
  :math:`x_{k+1} = \\Pi_{[0,1]}\\Pi_{B_\\epsilon(x)}(x_k + \\alpha\\,\\mathrm{sign}(\\nabla_x L))`,
  on the cross-entropy, the CW margin or any summed loss; it is also the training attack;
- :func:`fgsm`: one step of size :math:`\\epsilon` from :math:`x`;
- :func:`cw_inf`: PGD on the CW margin loss (:func:`cw_margin_loss`) with confidence 50;
- :func:`transfer`: an attack crafted on a surrogate model, never querying the target.

:func:`pgd` draws its random start from ``generator`` (or torch's global generator) unless
``sample_seeds`` is given (:mod:`.keyed_rng`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_int, fail
from ..runtime.execution import ModelMode, check_mode
from ..runtime.execution import model_mode as set_mode
from .keyed_rng import keyed_noise, sample_keys

StartKind = Literal["uniform", "normal"] | None
LossFn = Callable[[Tensor, Tensor], Tensor]


def check_nonnegative(name: str, value: float) -> None:
    """Raise unless ``value`` is a real number ``>= 0`` (a budget, a step size, a scale)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        fail(name, value, "a non-negative number")


def check_inputs(x: Tensor, y: Tensor | None = None) -> None:
    """Raise unless ``x`` is a floating-point batch and ``y`` (if a tensor) has one entry per image."""
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


def project(x_adv: Tensor, x: Tensor, eps: float) -> Tensor:
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
    check_inputs(x, y_or_target if not callable(loss) else None)
    check_nonnegative("eps", eps)
    check_nonnegative("step_size", step_size)
    check_nonnegative("start_std", start_std)
    check_int("steps", steps, minimum=0)
    check_mode(model_mode)
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
            keys = sample_keys(0, sample_seeds, x.device, x.shape[0])
            noise = scale * keyed_noise(keys, x.shape, random_start).to(x.dtype)
        elif random_start == "uniform":
            noise = torch.empty_like(x).uniform_(-eps, eps, generator=generator)
        else:
            noise = start_std * torch.randn(
                x.shape, generator=generator, device=x.device, dtype=x.dtype
            )
        x_adv = x + noise
        if clamp_start:
            x_adv = x_adv.clamp(0.0, 1.0)

    with set_mode(model, model_mode), torch.enable_grad():
        for _ in range(steps):
            x_adv = x_adv.detach().requires_grad_(True)
            value = loss_fn(model(x_adv), y_or_target)
            (grad,) = torch.autograd.grad(value, [x_adv])
            x_adv = project(x_adv.detach() + step_size * grad.sign(), x, eps)
    # Idempotent after a step; keeps the contract for steps == 0 too.
    return project(x_adv.detach(), x, eps)


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
