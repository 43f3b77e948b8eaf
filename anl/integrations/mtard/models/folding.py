"""BatchNorm folded into the convolution that feeds it, for networks run in eval mode.

In eval mode a BatchNorm layer applies a fixed per-channel affine map (running statistics
:math:`\\mu, \\sigma^2`, affine parameters :math:`\\gamma, \\beta`):

.. math::

    \\mathrm{BN}(z) = s \\odot (z - \\mu) + \\beta, \\qquad
    s = \\gamma / \\sqrt{\\sigma^2 + \\epsilon},

so a convolution :math:`z = W * x + b` followed by it is a single convolution with
:math:`W' = s \\odot W` (per output channel) and :math:`b' = s \\odot (b - \\mu) + \\beta`:
the same function, exactly up to float rounding, without the BatchNorm pass in the forward
and, when a gradient flows through it, in the backward.

- :func:`fold_batchnorm` folds a *frozen* network in place (the teachers: every teacher
  forward of every training step).
- :class:`FoldedEvalView` gives the eval-mode function of a network that keeps training
  (the student during the eval-mode training attacks of MTARD, SAT, TRADES, RSLAD and the
  ablations): each call recomputes :math:`W', b'` from the student's current weights and
  running statistics and leaves the student untouched. Ten attack passes per step then skip
  BatchNorm's forward and backward (``docs/benchmarks.md`` has the measured gain).

A (conv, BN) pair is folded only when the BN's input is the conv's output, nothing else uses
that output, each module is called once per forward and the BN keeps running statistics. The
pairs are found by running the network once on an example batch with hooks and reading the
autograd graph (:func:`conv_bn_pairs`), so any architecture works, without symbolic tracing.
"""

from __future__ import annotations

import collections
import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..runtime.execution import model_mode

_BATCHNORMS = (nn.BatchNorm2d, nn.SyncBatchNorm)


def fused_conv_bn(conv: nn.Conv2d, bn: nn.modules.batchnorm._BatchNorm) -> tuple[Tensor, Tensor]:
    """The weight and bias of the convolution computing ``bn(conv(x))`` with BN in eval mode.

    :math:`s = \\gamma / \\sqrt{\\sigma^2 + \\epsilon}` and the shift
    :math:`\\beta - s \\mu` are computed in float64 (per channel, cheap) and cast to the
    weight's dtype; :math:`W' = s \\odot W` keeps the weight's dtype and memory format (a
    channels-last weight stays channels-last), :math:`b' = s \\odot b + \\text{shift}`.
    No graph is recorded.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(
            "Parameter `bn` should keep running statistics (track_running_stats=True) to be "
            "folded. Found `bn.running_mean = None`."
        )
    with torch.no_grad():
        scale = torch.rsqrt(bn.running_var.double() + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight.double()
        shift = -bn.running_mean.double() * scale
        if bn.bias is not None:
            shift = shift + bn.bias.double()
        if conv.bias is not None:
            shift = shift + conv.bias.double() * scale
        weight = torch.empty_like(conv.weight, requires_grad=False)
        torch.mul(conv.weight, scale.to(conv.weight.dtype).reshape(-1, 1, 1, 1), out=weight)
        return weight, shift.to(conv.weight.dtype)


def conv_bn_pairs(model: nn.Module, example_input: Tensor) -> list[tuple[str, str]]:
    """The ``(conv name, BN name)`` pairs of ``model`` that can be folded, in module order.

    ``model`` runs once on ``example_input`` in eval mode (the modes of its submodules are
    restored afterwards; eval mode updates no running statistics) with hooks on every
    ``Conv2d`` and BatchNorm (``BatchNorm2d``, ``SyncBatchNorm``). A pair qualifies when the
    BN's input is the conv's output, nothing else uses that output, each module ran once and
    the BN keeps running statistics.
    """
    calls: collections.Counter[str] = collections.Counter()
    conv_out: dict[str, Any] = {}  # conv name -> autograd node of its output
    bn_in: dict[str, Any] = {}  # bn name -> autograd node of its input

    def after_conv(name: str):
        def hook(module: nn.Module, inputs: Any, output: Tensor) -> None:
            calls[name] += 1
            conv_out[name] = output.grad_fn

        return hook

    def before_bn(name: str):
        def hook(module: nn.Module, inputs: Any) -> None:
            calls[name] += 1
            bn_in[name] = inputs[0].grad_fn

        return hook

    modules = dict(model.named_modules())
    handles = []
    for name, module in modules.items():
        if type(module) is nn.Conv2d:
            handles.append(module.register_forward_hook(after_conv(name)))
        elif type(module) in _BATCHNORMS:
            handles.append(module.register_forward_pre_hook(before_bn(name)))
    try:
        with model_mode(model, "eval"), torch.enable_grad():
            output = model(example_input.detach().clone().requires_grad_(True))
    finally:
        for handle in handles:
            handle.remove()

    # How many graph edges (and model outputs) use each autograd node.
    uses: collections.Counter[Any] = collections.Counter()
    stack = [t.grad_fn for t in _tensors(output) if t.grad_fn is not None]
    uses.update(stack)
    seen = set()
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        for child, _ in node.next_functions:
            if child is not None:
                uses[child] += 1
                stack.append(child)

    producer = {node: name for name, node in conv_out.items() if node is not None}
    pairs = []
    for bn_name, node in bn_in.items():
        conv_name = producer.get(node)
        bn = modules[bn_name]
        if (
            conv_name is not None
            and uses[node] == 1
            and calls[conv_name] == 1
            and calls[bn_name] == 1
            and bn.running_mean is not None
            and bn.running_var is not None
        ):
            pairs.append((conv_name, bn_name))
    order = {name: i for i, name in enumerate(modules)}
    return sorted(pairs, key=lambda pair: order[pair[0]])


def fold_batchnorm(model: nn.Module, example_input: Tensor) -> nn.Module:
    """Fold every foldable eval-mode BatchNorm of a frozen ``model`` into its conv, in place.

    ``bn(conv(x)) = conv'(x)`` with :func:`fused_conv_bn`'s weights, exactly up to float
    rounding, *in eval mode only*, so ``model.training`` must be False. The pairs are
    :func:`conv_bn_pairs`; anything else is left as it is. Each folded conv is replaced by
    the fused conv and its BN by ``nn.Identity``; the model is returned and must stay in
    eval mode. For a network that keeps training, use :class:`FoldedEvalView`.
    """
    if model.training:
        raise ValueError(
            "Parameter `model` should be in eval mode to fold BatchNorm (running statistics). "
            "Found `model.training = True`."
        )
    for conv_name, bn_name in conv_bn_pairs(model, example_input):
        conv = model.get_submodule(conv_name)
        weight, bias = fused_conv_bn(conv, model.get_submodule(bn_name))
        fused = _conv_with_bias(conv)
        fused.weight = nn.Parameter(weight, requires_grad=conv.weight.requires_grad)
        fused.bias = nn.Parameter(bias, requires_grad=conv.weight.requires_grad)
        _set_submodule(model, conv_name, fused)
        _set_submodule(model, bn_name, nn.Identity())
    return model.eval()


class FoldedEvalView:
    """The eval-mode function of a training network, BatchNorm folded, for eval-mode attacks.

    ``view(x)`` returns a module computing ``model.eval()(x)`` from ``model``'s *current*
    parameters and running statistics with every foldable BatchNorm folded
    (:func:`fused_conv_bn`): the folded convs get :math:`W' = s \\odot W`,
    :math:`b' = s \\odot (b - \\mu) + \\beta` computed by this call, every other parameter
    and buffer is ``model``'s own tensor. ``model`` is never modified and its mode is
    irrelevant; call the view again after the weights or the statistics change (the
    training loop calls it once per attack, i.e. once per step). The first call finds the
    pairs with :func:`conv_bn_pairs` on ``x`` (one extra eval-mode forward).

    The returned module is eval-only (``.train()`` raises) and has no parameters of its
    own: gradients flow to the input and, through the unfolded layers, to ``model``'s
    parameters, never to the fused weights. Its outputs equal ``model``'s eval-mode
    outputs up to float rounding; an attack on it can therefore take another sign where a
    gradient entry is within rounding of zero.

    Example:
        >>> from anl.integrations.mtard.models import build_model
        >>> student = build_model("small_cnn", num_classes=10, in_channels=1)
        >>> x = torch.rand(4, 1, 28, 28)
        >>> view = FoldedEvalView(student)
        >>> torch.allclose(view(x)(x), student.eval()(x), atol=1e-5)
        True
        >>> view.pairs
        [('features.0', 'features.1'), ('features.4', 'features.5')]
    """

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(
                f"Parameter `model` should be an nn.Module. Found `model = {type(model)!r}`."
            )
        self.model = model
        self.pairs: list[tuple[str, str]] | None = None
        self._skeleton: nn.Module | None = None
        self._shared: list[str] = []

    def __call__(self, example_input: Tensor) -> nn.Module:
        if self._skeleton is None:
            self._build(example_input)
        assert self._skeleton is not None and self.pairs is not None
        tensors: dict[str, Tensor] = {}
        for conv_name, bn_name in self.pairs:
            weight, bias = fused_conv_bn(
                self.model.get_submodule(conv_name), self.model.get_submodule(bn_name)
            )
            tensors[f"{conv_name}.weight"] = weight
            tensors[f"{conv_name}.bias"] = bias
        own = dict(self.model.named_parameters())
        own.update(self.model.named_buffers())
        for name in self._shared:
            tensors[name] = own[name]
        return _FoldedForward(self._skeleton, tensors)

    def _build(self, example_input: Tensor) -> None:
        self.pairs = conv_bn_pairs(self.model, example_input)
        # The structure only: parameters and buffers on the meta device (no memory); every
        # call supplies the real tensors.
        skeleton = copy.deepcopy(self.model).to("meta")
        for conv_name, bn_name in self.pairs:
            _set_submodule(skeleton, conv_name, _conv_with_bias(skeleton.get_submodule(conv_name)))
            _set_submodule(skeleton, bn_name, nn.Identity())
        folded = {name for pair in self.pairs for name in pair}
        skeleton.requires_grad_(False)
        self._skeleton = skeleton.eval()
        self._shared = [
            name
            for name, _ in [*skeleton.named_parameters(), *skeleton.named_buffers()]
            if name.rpartition(".")[0] not in folded
        ]


class _FoldedForward(nn.Module):
    """``skeleton`` called with ``tensors`` as its parameters and buffers; eval mode only."""

    def __init__(self, skeleton: nn.Module, tensors: Mapping[str, Tensor]) -> None:
        super().__init__()
        self.skeleton = skeleton
        self.tensors = dict(tensors)
        super().train(False)

    def train(self, mode: bool = True) -> _FoldedForward:
        if mode:
            raise RuntimeError(
                "A FoldedEvalView module computes the eval-mode function only (its BatchNorm "
                "is folded); it cannot be put in train mode."
            )
        return super().train(False)

    def forward(self, x: Tensor) -> Any:
        return torch.func.functional_call(self.skeleton, self.tensors, (x,), strict=True)


def _conv_with_bias(conv: nn.Conv2d) -> nn.Conv2d:
    """An empty ``Conv2d`` like ``conv`` (same geometry, device, dtype) with a bias."""
    return nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )


def _tensors(value: Any) -> list[Tensor]:
    """The tensors in a (nested) tuple, list or dict of outputs."""
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, Mapping):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)
