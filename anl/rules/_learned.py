r"""What uncertainty weighting and IMTL-L share: one learned parameter per loss in a module.

Both methods minimise, jointly with the model, a total in which loss :math:`L_i` is scaled by
:math:`a_i e^{\sigma s_i}` and a term :math:`-\sigma b_i s_i` keeps :math:`s_i` from running
off:

.. math::

    L_{total} = \sum_{i\ \text{present}} \left( a_i\, e^{\sigma s_i} L_i - \sigma\, b_i\, s_i \right),
    \qquad w_i = a_i\, e^{\sigma s_i},

with :math:`\sigma = -1` for uncertainty weighting (:math:`s_i` a log-variance) and
:math:`\sigma = +1` for IMTL-L (:math:`s_i` a log-scale). Its minimum over :math:`s_i` is at
:math:`a_i e^{\sigma s_i} L_i = b_i`: each learned weight tracks :math:`b_i / L_i`.

The :math:`s_i` are a :class:`torch.nn.Parameter` of the weighting, which is therefore a
:class:`torch.nn.Module` as well as an :class:`anl.LossWeighting`; the user's optimiser
updates them from the gradient of the total that :meth:`step` returns.

The two ``state_dict`` methods are reconciled as follows:

- ``weighting.state_dict()`` and ``weighting.load_state_dict(sd)`` (no other argument) use the
  library's format (``"state"`` and ``"hyperparameters"``, all-or-nothing), with the parameter
  in ``"state"``;
- called with :class:`torch.nn.Module`'s arguments (``destination``, ``prefix``, ``keep_vars``;
  ``strict``, ``assign``), which is how a parent module calls them, they are
  :class:`torch.nn.Module`'s: the parameter is an ordinary entry and the rest of the state is
  the module's *extra state* (:meth:`get_extra_state`), so a user's ``model.state_dict()``
  saves and ``model.load_state_dict()`` restores all of it. Both entries of this module are
  checked before either is applied.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from anl import functional
from anl.inputs import Losses, constant_vector, describe, parse_names
from anl.rules._common import stacked_losses
from anl.state import split_state_dict
from anl.weighting import LossWeighting

__all__ = ["LearnedScales"]

_EXTRA_STATE = "_extra_state"  # torch.nn.Module's key suffix for get_extra_state()


class LearnedScales(LossWeighting, nn.Module):
    """Base of the rules whose weights are :math:`a_i e^{\\sigma s_i}` with ``s`` a parameter.

    A subclass sets :attr:`parameter_name` and :attr:`sign`, and implements
    :meth:`_coefficients` (the :math:`a_i` and :math:`b_i` from its hyperparameters).
    """

    #: The attribute under which the parameter ``s`` is registered.
    parameter_name: ClassVar[str]
    #: :math:`\sigma`: -1 (``w = a e^{-s}``) or +1 (``w = a e^{s}``).
    sign: ClassVar[float]

    def __init__(
        self,
        losses: int | Sequence[str],
        defaults: Mapping[str, Any],
        *,
        initial: float | Sequence[float] | Tensor,
        initial_name: str,
        strict: bool,
        distributed: bool,
        history_size: int | None,
        dtype: torch.dtype,
    ) -> None:
        nn.Module.__init__(self)
        n = len(parse_names(losses))
        start = _finite_floats(initial, n, initial_name)
        scale, _ = self._coefficients_of(defaults, n)
        weights = [_scaled_exp(a, self.sign * s) for a, s in zip(scale, start, strict=True)]
        if not all(math.isfinite(w) for w in weights):
            raise ValueError(
                f"Parameter `{initial_name}` should give finite weights. "
                f"Found `{initial_name} = {start}`."
            )
        LossWeighting.__init__(
            self,
            losses,
            defaults,
            initial_weights=weights,
            strict=strict,
            distributed=distributed,
            history_size=history_size,
            dtype=dtype,
        )
        self.register_parameter(self.parameter_name, nn.Parameter(torch.tensor(start, dtype=dtype)))

    # ------------------------------------------------------------------------ the rule
    def _coefficients(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """:math:`(a_i)` and :math:`(b_i)` from the current hyperparameters (computed again
        only when a hyperparameter changed: the step calls this twice)."""
        key = tuple(tuple(v) if isinstance(v, list) else v for v in self.defaults.values())
        cached = self.__dict__.get("_coefficients_cache")
        if cached is None or cached[0] != key:
            scale, bias = self._coefficients_of(self.defaults, self.num_losses)
            cached = (key, (tuple(scale), tuple(bias)))
            self.__dict__["_coefficients_cache"] = cached
        return cached[1]

    @classmethod
    def _coefficients_of(
        cls, defaults: Mapping[str, Any], n: int
    ) -> tuple[list[float], list[float]]:
        raise NotImplementedError

    @property
    def _parameter(self) -> nn.Parameter:
        return getattr(self, self.parameter_name)

    def forward(self, losses: Losses) -> Tensor | float:
        """:meth:`step`, so that ``weighting(losses)`` works inside a model's ``forward``."""
        return self.step(losses)

    def _check_device(self, device: torch.device | None) -> None:
        """Refuse, before anything changes, tensor losses on another device than ``s``."""
        parameter = self._parameters[self.parameter_name]
        if device is not None and parameter.device != device:
            raise ValueError(
                f"Parameter `{self.parameter_name}` should be on the losses' device. Found it on "
                f"{parameter.device} and the losses on {device}: move the weighting with "
                "`.to(device)` before building the optimiser, or make it a submodule of the model."
            )

    def _update(
        self,
        state: Mapping[str, Any],
        relative: functional.Vector,
        present: Sequence[bool] | Tensor | None,
    ) -> dict[str, Any]:
        # The weights are a function of the parameter alone: a_i e^{sign s_i} as applied now.
        scale, _ = self._coefficients()
        s = self._parameters[self.parameter_name].detach()
        if isinstance(relative, Tensor):
            s = s.to(device=relative.device, dtype=relative.dtype)
            a = constant_vector(scale, relative.device, relative.dtype)
            weights = a * torch.exp(self.sign * s)
            return {"weights": weights.clamp(max=torch.finfo(relative.dtype).max)}
        sign = self.sign
        return {
            "weights": [_scaled_exp(a, sign * v) for a, v in zip(scale, s.tolist(), strict=True)]
        }

    def _combine(
        self,
        weights: functional.Vector,
        losses: list[Tensor] | list[float],
        kept: list[int] | None,
    ) -> Tensor | float:
        scale, bias = self._coefficients()
        parameter = self._parameters[self.parameter_name]
        if kept is not None:
            scale, bias = tuple(scale[i] for i in kept), tuple(bias[i] for i in kept)
        if not isinstance(losses[0], Tensor):  # numbers only: a float, for logging
            s = parameter.detach().cpu().tolist()
            if kept is not None:
                s = [s[i] for i in kept]
            return sum(
                _scaled_exp(a, self.sign * v) * loss - self.sign * b * v
                for a, b, v, loss in zip(scale, bias, s, losses, strict=True)
            )
        # As few operations as the formula allows (each is a kernel and an autograd node,
        # which dominate a small step: benchmarks/small_step.py): one stack, one exp, a dot
        # product, a sum or a second dot product, one subtraction; the casts only where a
        # dtype differs.
        values = stacked_losses(losses)
        dtype = values.dtype
        work = torch.promote_types(dtype, parameter.dtype)  # float64 when s is
        if values.dtype != work:
            values = values.to(work)
        s = parameter if kept is None else parameter[kept]
        if s.dtype != work:
            s = s.to(work)
        device = values.device
        weights = torch.exp(s if self.sign > 0 else s.neg())
        if any(a != 1.0 for a in scale):
            weights = weights * constant_vector(scale, device, work)
        if all(b == 1.0 for b in bias):
            bias_term = s.sum()
        else:
            bias_term = torch.dot(constant_vector(bias, device, work), s)
        total = torch.sub(torch.dot(weights, values), bias_term, alpha=self.sign)
        return total if total.dtype == dtype else total.to(dtype)

    # ------------------------------------------------------------------------ persistence
    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        """The library's state dict, with the parameter in ``"state"``; with
        :class:`torch.nn.Module`'s arguments (as a parent module passes them), the module's."""
        if args or kwargs:
            return nn.Module.state_dict(self, *args, **kwargs)
        saved = LossWeighting.state_dict(self)
        saved["state"][self.parameter_name] = self._parameter.detach().to("cpu", copy=True)
        return saved

    def load_state_dict(self, state_dict: Mapping[str, Any], *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        """Restore a :meth:`state_dict`, all or nothing; the parameter is copied in place (the
        optimiser keeps it). With :class:`torch.nn.Module`'s arguments (``strict``,
        ``assign``), :meth:`torch.nn.Module.load_state_dict`."""
        if args or kwargs:
            return nn.Module.load_state_dict(self, state_dict, *args, **kwargs)  # type: ignore[arg-type]
        state, _ = split_state_dict(state_dict, type(self).__name__)
        value = self._checked_parameter(state.get(self.parameter_name))
        LossWeighting.load_state_dict(self, state_dict)
        with torch.no_grad():
            self._parameter.copy_(value)
        return None

    def _checked_parameter(self, value: Any) -> Tensor:
        n = self.num_losses
        if (
            not isinstance(value, Tensor)
            or tuple(value.shape) != (n,)
            or not value.is_floating_point()
            or not bool(torch.isfinite(value).all())
        ):
            raise ValueError(
                f"State `{self.parameter_name}` should be a finite floating tensor of shape "
                f"({n},). Found {describe(value)}."
            )
        return value.detach()

    def get_extra_state(self) -> dict[str, Any]:
        """Everything but the parameter, in the library's format (for ``model.state_dict()``)."""
        return LossWeighting.state_dict(self)

    def set_extra_state(self, state: Any) -> None:
        LossWeighting.load_state_dict(self, state)

    def _load_from_state_dict(
        self,
        state_dict: Mapping[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # Check the parameter and the extra state before torch applies either of them.
        problem = None
        key = prefix + self.parameter_name
        if key in state_dict:
            try:
                self._checked_parameter(state_dict[key])
            except ValueError as error:
                problem = str(error)
        extra = prefix + _EXTRA_STATE
        if problem is None and extra in state_dict:
            probe = copy.copy(self)  # loading rebinds its attributes only, never mutates ours
            try:
                LossWeighting.load_state_dict(probe, state_dict[extra])
            except (ValueError, TypeError) as error:
                problem = str(error)
        if problem is not None:
            error_msgs.append(
                f"{type(self).__name__} at '{prefix}': {problem} Nothing of it was loaded."
            )
            return
        nn.Module._load_from_state_dict(
            self,
            state_dict,
            prefix,
            local_metadata,
            strict,
            missing_keys,
            unexpected_keys,
            error_msgs,
        )


def _scaled_exp(a: float, x: float) -> float:
    """``a * exp(x)`` as a float, saturating at the largest finite float instead of overflowing."""
    try:
        value = a * math.exp(x)
    except OverflowError:
        value = math.inf
    return min(value, _FLOAT_MAX)


_FLOAT_MAX = torch.finfo(torch.float64).max


def _finite_floats(values: Any, n: int, name: str) -> list[float]:
    """``n`` finite floats from a number (repeated), a sequence, an array or a tensor."""
    if isinstance(values, numbers.Real) and not isinstance(values, bool):
        values = [float(values)] * n
    try:
        array = np.asarray(
            values.detach().cpu() if isinstance(values, Tensor) else values, dtype=np.float64
        )
    except (TypeError, ValueError):
        array = None
    if array is None or array.shape != (n,) or not np.isfinite(array).all():
        raise ValueError(
            f"Parameter `{name}` should be a finite number or {n} finite numbers (one per loss). "
            f"Found `{name} = {describe(values)}`."
        )
    return array.tolist()
