"""The teachers of a distillation run: frozen, on the device, BatchNorm folded.

:func:`load_teacher_model` reads a teacher checkpoint (one of this project's, or a foreign
RobustBench or TRADES one) and :func:`prepare_teacher` freezes it: eval mode, no parameter
gradients. The teachers only ever run in eval mode, where BatchNorm applies a fixed
per-channel affine map, so :func:`fold_batchnorm` merges each BatchNorm into the convolution
that feeds it, exactly up to float rounding: one layer fewer per block in every teacher
forward of every training step (``docs/benchmarks.md``).
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import checkpoints as _checkpoints

__all__ = ["fold_batchnorm", "load_teacher_model", "prepare_teacher"]


def _fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A copy of ``conv`` that computes ``bn(conv(x))`` with BN in eval mode.

    ``s = gamma / sqrt(running_var + eps)``; ``W' = s * W`` (per output channel) and
    ``b' = s * (b - running_mean) + beta``, computed in float64 and cast back.
    """
    fused = nn.Conv2d(
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
    with torch.no_grad():
        var = bn.running_var.double()
        scale = torch.rsqrt(var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight.double()
        shift = -bn.running_mean.double() * scale
        if bn.bias is not None:
            shift = shift + bn.bias.double()
        weight = conv.weight.double() * scale.reshape(-1, 1, 1, 1)
        bias = shift if conv.bias is None else conv.bias.double() * scale + shift
        fused.weight.copy_(weight.to(conv.weight.dtype))
        fused.bias.copy_(bias.to(conv.weight.dtype))
    fused.eval()
    fused.requires_grad_(conv.weight.requires_grad)
    return fused


def fold_batchnorm(model: nn.Module, example_input: torch.Tensor) -> nn.Module:
    """Fold every eval-mode ``BatchNorm2d`` fed directly and only by a ``Conv2d`` into it.

    ``bn(conv(x)) = conv'(x)`` with :func:`_fuse_conv_bn`'s weights, exactly up to float
    rounding, *in eval mode only* (BN then applies a fixed per-channel affine map), so
    ``model.training`` must be False. The pairs are found by running ``model`` once on
    ``example_input`` with hooks and reading the autograd graph: a pair is folded only when
    the BN's input is the conv's output, nothing else uses that output, and each module is
    called once. Anything else is left as it is, so the function works on any architecture
    (no symbolic tracing). The conv is replaced by the fused conv and the BN by
    ``nn.Identity`` *in place*; the model is returned and must stay in eval mode.
    """
    if model.training:
        raise ValueError(
            "Parameter `model` should be in eval mode to fold BatchNorm (running statistics). "
            "Found `model.training = True`."
        )
    calls: collections.Counter[str] = collections.Counter()
    conv_out: dict[str, Any] = {}  # conv name -> autograd node of its output
    bn_in: dict[str, Any] = {}  # bn name -> autograd node of its input

    def after_conv(name: str):
        def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
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
        elif type(module) is nn.BatchNorm2d:
            handles.append(module.register_forward_pre_hook(before_bn(name)))
    try:
        with torch.enable_grad():
            output = model(example_input.detach().clone().requires_grad_(True))
    finally:
        for handle in handles:
            handle.remove()

    # How many graph edges (and model outputs) use each autograd node.
    uses: collections.Counter[Any] = collections.Counter()
    outputs = _tensors(output)
    stack = [t.grad_fn for t in outputs if t.grad_fn is not None]
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
    for bn_name, node in bn_in.items():
        conv_name = producer.get(node)
        bn = modules[bn_name]
        if (
            conv_name is None
            or uses[node] != 1
            or calls[conv_name] != 1
            or calls[bn_name] != 1
            or bn.running_mean is None
            or bn.running_var is None
        ):
            continue
        _set_submodule(model, conv_name, _fuse_conv_bn(modules[conv_name], bn))
        _set_submodule(model, bn_name, nn.Identity())
    return model.eval()


def _tensors(value: Any) -> list[torch.Tensor]:
    """The tensors in a (nested) tuple, list or dict of outputs."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, Mapping):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def prepare_teacher(
    model: nn.Module,
    *,
    device: str | torch.device | None = None,
    fold_bn: bool = True,
    example_input: torch.Tensor | None = None,
) -> nn.Module:
    """Freeze a teacher: eval mode, no parameter gradients, on ``device``, BN folded.

    Folding (:func:`fold_batchnorm`) needs an ``example_input`` (one small batch of the
    model's input shape); without one, or with ``fold_bn=False``, the BN layers stay.
    """
    model.eval()
    model.requires_grad_(False)
    if device is not None:
        model = model.to(device)
    if fold_bn and example_input is not None:
        example = example_input.to(next(model.parameters()).device)
        model = fold_batchnorm(model, example)
        model.requires_grad_(False)
    return model.eval()


def load_teacher_model(
    path: str | Path,
    *,
    arch: str | None,
    num_classes: int,
    in_channels: int,
    model_kwargs: dict[str, Any] | None = None,
    device: str | torch.device | None = None,
    fold_bn: bool = True,
    image_size: int | None = None,
) -> nn.Module:
    """Load a teacher checkpoint and :func:`prepare_teacher` it.

    ``arch=None`` reads one of this project's checkpoints (:func:`checkpoints.load_model`);
    otherwise a foreign checkpoint (RobustBench, TRADES) is read into ``build_model(arch, ...)``
    with :func:`checkpoints.load_teacher`. BatchNorm is folded when ``fold_bn`` and
    ``image_size`` (the side of the square input images) are given.
    """
    if arch is None:
        model = _checkpoints.load_model(path)
    else:
        model = _checkpoints.load_teacher(
            path,
            arch=arch,
            num_classes=num_classes,
            in_channels=in_channels,
            fmt="auto",
            model_kwargs=model_kwargs or None,
        )
    example = None
    if image_size is not None:
        generator = torch.Generator().manual_seed(0)  # leaves the global RNG alone
        example = torch.rand(2, in_channels, image_size, image_size, generator=generator)
    return prepare_teacher(model, device=device, fold_bn=fold_bn, example_input=example)
