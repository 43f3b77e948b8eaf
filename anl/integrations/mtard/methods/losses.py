"""The loss conventions of the official codes of MTARD and its baselines, in one place.

The papers all write "KL", but their codes compute four different quantities. They differ by
constant factors (1 / C, 1 / B, T^2), which matter: the constant weights of each method were
tuned for its own convention, and ANL (paper Eq. 7) divides every loss by its first value, so
only ratios survive there. Each function below states the formula it computes and the code it
comes from. ``B`` is the batch size, ``C`` the number of classes, ``s`` student logits, ``t``
teacher (or target) logits, ``p_t = softmax(t)``.

================  ==========================================================  ============
function          formula                                                      used by
================  ==========================================================  ============
``kl_official``   ``factor / (B C) * sum p_t (log(p_t + 1e-5) - log_softmax(s))``  MTARD, RSLAD
``kl_ard``        ``T^2 / (B C) * sum KL(softmax(t / T) || softmax(s / T))``  ARD
``kl_trades``     ``1 / B * sum KL(softmax(t) || softmax(s))``                TRADES
``kl_sum``        ``sum KL(softmax(t) || softmax(s))``                        attacks of TRADES, RSLAD
``ce``            ``1 / B * sum -log_softmax(s)[y]``                          SAT, TRADES, ARD
================  ==========================================================  ============
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ce", "kl_ard", "kl_official", "kl_sum", "kl_trades"]

#: The constant added to the teacher's probabilities inside the logarithm by the MTARD and
#: RSLAD codes (``torch.log(b + 1e-5) * b``).
OFFICIAL_LOG_EPS = 1e-5


def _check_pair(student_logits: Tensor, teacher_logits: Tensor) -> None:
    if student_logits.ndim != 2:
        raise ValueError(
            "Parameter `student_logits` should be a 2-D tensor (batch, classes). "
            f"Found `student_logits.shape = {tuple(student_logits.shape)}`."
        )
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(
            "Parameter `teacher_logits` should have the shape of `student_logits` "
            f"{tuple(student_logits.shape)}. Found `teacher_logits.shape = "
            f"{tuple(teacher_logits.shape)}`."
        )


def kl_official(student_logits: Tensor, teacher_logits: Tensor, factor: float = 1.0) -> Tensor:
    r"""KL divergence as the official MTARD and RSLAD codes compute it.

    .. math::

        \mathrm{KL}(s, t) = \frac{\text{factor}}{B C} \sum_{b=1}^{B} \sum_{c=1}^{C}
            p_{bc} \left(\log(p_{bc} + 10^{-5}) - \log \operatorname{softmax}(s_b)_c\right),
        \qquad p_b = \operatorname{softmax}(t_b)

    - :math:`s`, :math:`t`: student and teacher logits, shape ``(B, C)``;
    - the mean runs over all ``B * C`` elements, so this is the batch-mean KL divided by the
      number of classes ``C`` (``torch.mean`` of the element-wise ``kl_loss(a, b) = -a * b +
      torch.log(b + 1e-5) * b`` of the MTARD and RSLAD scripts);
    - ``factor``: 1 in the CIFAR-10 scripts, 10 in MTARD's CIFAR-100 script (RSLAD's README:
      it keeps the CIFAR-100 loss on the CIFAR-10 scale, since ``C`` is 10 times larger).

    There is no temperature (T = 1). The teacher logits are detached: a teacher never gets a
    gradient. Used by MTARD (paper Eq. 3, :math:`L_{adv}` and :math:`L_{nat}`), RSLAD and
    the paper's ablations.

    Example:
        >>> s = torch.log(torch.tensor([[0.25, 0.5, 0.25]]))
        >>> t = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))
        >>> round(float(kl_official(s, t)), 5)  # (0.25 log 2 + 3e-5) / 3, the 1e-5 inside log
        0.05777
    """
    _check_pair(student_logits, teacher_logits)
    p_t = F.softmax(teacher_logits.detach(), dim=1)
    log_q = F.log_softmax(student_logits, dim=1)
    return factor * torch.mean(p_t * (torch.log(p_t + OFFICIAL_LOG_EPS) - log_q))


def kl_ard(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    r"""The distillation term of ARD (Goldblum et al., AAAI 2020), with its temperature factor.

    .. math::

        \mathrm{KL}_{ARD}(s, t) = \frac{T^2}{B C} \sum_{b, c} p^T_{bc}
            \left(\log p^T_{bc} - \log \operatorname{softmax}(s_b / T)_c\right),
        \qquad p^T_b = \operatorname{softmax}(t_b / T)

    This is ``T * T * nn.KLDivLoss()(F.log_softmax(s / T, 1), F.softmax(t / T, 1))`` of the
    official ARD code: ``nn.KLDivLoss()`` has the default reduction ``"mean"``, an average over
    all ``B * C`` elements (not the batch mean); ``0 * log 0`` counts as 0. ARD uses ``T = 30``
    on CIFAR-10 (its code's default) and ``T = 5`` on CIFAR-100 (its paper). The teacher logits
    are detached.

    Example:
        >>> s = torch.zeros(1, 2)
        >>> t = torch.tensor([[0.0, 0.0]])
        >>> float(kl_ard(s, t, temperature=5.0))
        0.0
    """
    _check_pair(student_logits, teacher_logits)
    if not temperature > 0:
        raise ValueError(
            f"Parameter `temperature` should be positive. Found `temperature = {temperature}`."
        )
    p_t = F.softmax(teacher_logits.detach() / temperature, dim=1)
    log_q = F.log_softmax(student_logits / temperature, dim=1)
    # ``reduction="mean"`` of F.kl_div warns; the sum over the element count is the same value.
    kl_mean = F.kl_div(log_q, p_t, reduction="sum") / p_t.numel()
    return temperature * temperature * kl_mean


def kl_sum(student_logits: Tensor, target_logits: Tensor) -> Tensor:
    r"""Summed KL divergence, the loss the TRADES and RSLAD attacks maximise.

    .. math::

        \mathrm{KL}_{sum}(s, t) = \sum_{b, c} p_{bc}
            \left(\log p_{bc} - \log \operatorname{softmax}(s_b)_c\right),
        \qquad p_b = \operatorname{softmax}(t_b)

    This is ``nn.KLDivLoss(size_average=False)(F.log_softmax(s, 1), F.softmax(t, 1))`` of the
    official TRADES and RSLAD codes (RSLAD: ``reduce=False`` then ``torch.sum``). It is a sum
    over the batch, so each example's input gradient is that of its own KL term. The target is
    **not** detached here: the attacks differentiate with respect to the input only.

    Example:
        >>> s = torch.log(torch.tensor([[0.25, 0.5, 0.25], [0.25, 0.5, 0.25]]))
        >>> t = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.5, 0.25, 0.25]]))
        >>> round(float(kl_sum(s, t)), 5)  # 2 * 0.25 log 2
        0.34657
    """
    _check_pair(student_logits, target_logits)
    p_t = F.softmax(target_logits, dim=1)
    return F.kl_div(F.log_softmax(student_logits, dim=1), p_t, reduction="sum")


def kl_trades(adv_logits: Tensor, clean_logits: Tensor) -> Tensor:
    r"""The robust term of TRADES (Zhang et al., ICML 2019), as its official code computes it.

    .. math::

        \mathrm{KL}_{TRADES}(f(x'), f(x)) = \frac{1}{B} \sum_{b, c} p_{bc}
            \left(\log p_{bc} - \log \operatorname{softmax}(f(x'_b))_c\right),
        \qquad p_b = \operatorname{softmax}(f(x_b))

    This is ``(1.0 / batch_size) * nn.KLDivLoss(size_average=False)(F.log_softmax(model(x_adv),
    1), F.softmax(model(x_natural), 1))``: the batch-mean KL. The clean logits are **not**
    detached: TRADES back-propagates through both branches, which pulls the clean prediction
    towards the adversarial one as well.

    Example:
        >>> s = torch.log(torch.tensor([[0.25, 0.5, 0.25], [0.25, 0.5, 0.25]]))
        >>> t = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.5, 0.25, 0.25]]))
        >>> round(float(kl_trades(s, t)), 5)  # 0.25 log 2
        0.17329
    """
    _check_pair(adv_logits, clean_logits)
    return kl_sum(adv_logits, clean_logits) / adv_logits.shape[0]


def ce(logits: Tensor, labels: Tensor) -> Tensor:
    r"""Batch-mean cross-entropy, ``nn.CrossEntropyLoss()`` of all the official codes.

    .. math::

        \mathrm{CE}(s, y) = -\frac{1}{B} \sum_{b=1}^{B} \log \operatorname{softmax}(s_b)_{y_b}

    Example:
        >>> round(float(ce(torch.zeros(2, 4), torch.tensor([0, 3]))), 5)  # log 4
        1.38629
    """
    if logits.ndim != 2:
        raise ValueError(
            "Parameter `logits` should be a 2-D tensor (batch, classes). "
            f"Found `logits.shape = {tuple(logits.shape)}`."
        )
    if labels.shape != logits.shape[:1]:
        raise ValueError(
            f"Parameter `labels` should have shape ({logits.shape[0]},). "
            f"Found `labels.shape = {tuple(labels.shape)}`."
        )
    return F.cross_entropy(logits, labels)
