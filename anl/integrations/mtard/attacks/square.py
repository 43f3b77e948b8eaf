"""The Square Attack, L-infinity (Andriushchenko et al., ECCV 2020): score-based black box.

Random search for a margin-minimising perturbation at the vertices of the eps-ball, with
AutoAttack's schedule of square sizes; its randomness is keyed per sample (:mod:`.keyed_rng`),
so the result does not depend on the batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_int
from ..runtime.execution import ModelMode
from ..runtime.execution import model_mode as set_mode
from ..runtime.optional import progress_bar
from .gradient import check_inputs, check_nonnegative, project
from .keyed_rng import keyed_bits, sample_keys

# AutoAttack's p schedule for 5000 queries: p = p_init / 2**k after iteration t_k.
_SQUARE_SCHEDULE = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
_SQUARE_REFERENCE_QUERIES = 5000


def square_fraction(iteration: int, n_queries: int, p_init: float) -> float:
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
    3. :math:`p_i` follows AutoAttack's schedule from ``p_init`` (:func:`square_fraction`).

    Only images that are still classified correctly are queried; images misclassified from
    the start are returned unchanged. Each attacked image costs at most ``n_queries`` model
    evaluations (the stripes start counts as one; AutoAttack counts ``n_queries`` iterations
    after it), not counting the clean prediction. Square positions include the last row and
    column (AutoAttack's sampler omits them). Randomness comes from a counter-based hash of
    ``(seed, sample_seeds[i], iteration)``, so results do not depend on the batch.

    Returns:
        ``x_adv``, or ``(x_adv, queries)`` with ``return_queries`` (int64 per image).
    """
    check_inputs(x, y)
    check_nonnegative("eps", eps)
    check_int("n_queries", n_queries, minimum=1)
    if not 0.0 < p_init <= 1.0:
        raise ValueError(f"Parameter `p_init` should be in (0, 1]. Found `p_init = {p_init!r}`.")
    if x.dim() != 4:
        raise ValueError(f"Parameter `x` should be NCHW. Found `x.shape = {tuple(x.shape)}`.")
    x = x.detach()
    n, c, h, w = x.shape
    device = x.device
    ids = torch.arange(n) if sample_seeds is None else sample_seeds
    keys = sample_keys(seed, ids, device, n)
    queries = torch.zeros(n, dtype=torch.int64, device=device)
    rows = torch.arange(h, device=device)
    cols = torch.arange(w, device=device)

    with set_mode(model, model_mode), torch.no_grad():
        x_best = x.clone()
        correct = model(x).argmax(dim=1) == y
        todo = correct.nonzero().squeeze(1)
        if todo.numel() > 0:
            # Stripes initialisation (stream 0).
            signs = (keyed_bits(keys[todo], 0, c * w) & 1).to(x.dtype) * 2 - 1
            start = (x[todo] + eps * signs.reshape(-1, c, 1, w)).clamp(0.0, 1.0)
            x_best[todo] = start
            margin = torch.full((n,), float("-inf"), device=device)
            margin[todo] = _margin(model(start), y[todo])
            queries[todo] = 1
            bar = progress_bar(range(n_queries - 1), desc="square", enabled=progress)
            for it in bar:
                active = (margin > 0).nonzero().squeeze(1)
                if active.numel() == 0:
                    break
                p = square_fraction(it, n_queries, p_init)
                s = min(max(round(math.sqrt(p * h * w)), 1), h, w)
                bits = keyed_bits(keys[active], it + 1, 2 + c)
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
        x_adv = project(x_best, x, eps)
    if return_queries:
        return x_adv, queries
    return x_adv
