"""Checkpoints of networks: this project's model format and third-party teachers.

Files are written with :func:`~..runtime.files.atomic_save` and read with
:func:`~..runtime.files.safe_load` (``weights_only=True``: a file that needs unrestricted
unpickling is refused). Our model files carry the SHA-256 of their content
(``content_sha256``, :func:`~..runtime.integrity.content_digest`), verified on load: a damaged or
modified file raises :class:`~..runtime.integrity.CorruptFileError` naming it. One written
before hashes loads with a one-time :class:`~..runtime.integrity.UnhashedFileWarning`.

* :func:`save_model_checkpoint` / :func:`load_model` — our model format::

      {"format": "anl-mtard-model", "version": 1, "arch": str, "num_classes": int,
       "in_channels": int, "model_kwargs": dict, "state_dict": dict[str, Tensor], **extra,
       "content_sha256": str}

  ``model_kwargs`` records the input normalisation too, so a model is rebuilt exactly.
* :func:`load_teacher` — our format, RobustBench's ``<model_dir>/<dataset>/<threat>/<name>.pt``
  files (plain state dicts, possibly wrapped in ``{"state_dict": ...}`` or
  ``{"model_state_dict": ...}``) and TRADES/RSLAD's ``model_cifar_wrn.pt`` (a plain state
  dict). ``module.`` (DataParallel) and ``_orig_mod.`` (``torch.compile``) prefixes are removed.
  Loading is strict (:func:`~.state_dict.check_state_dict`); a failure lists the missing
  keys, the unexpected keys and the shape mismatches.

Nothing here touches the network: teachers are read from files only.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..runtime.files import PathLike, atomic_save, safe_load_verified
from ..runtime.integrity import DIGEST_KEY, warn_unhashed
from . import MODELS, build_model, model_names
from .state_dict import (
    check_state_dict,
    load_state_dict_strict,
    strip_prefixes,
    unwrap_model,
)

#: Value of the ``"format"`` field of our model checkpoints.
FORMAT = "anl-mtard-model"
#: Version of our model checkpoint format.
VERSION = 1
#: Accepted values of ``load_teacher(fmt=...)``.
TEACHER_FORMATS = ("auto", "anl", "robustbench", "trades")
#: RobustBench's data set and threat-model folder names.
ROBUSTBENCH_DATASETS = ("cifar10", "cifar100", "imagenet")
ROBUSTBENCH_THREATS = ("Linf", "L2", "corruptions")

_RESERVED = (
    "format",
    "version",
    "arch",
    "num_classes",
    "in_channels",
    "model_kwargs",
    "state_dict",
    DIGEST_KEY,
)
_MAX_LISTED = 10


# --------------------------------------------------------------------------------------------
# Our model format
# --------------------------------------------------------------------------------------------

_SAFE_SCALARS = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device)
_SAFE_CONTAINERS = (dict, OrderedDict, list, tuple, set)


def _check_weights_only_safe(obj: Any, where: str) -> None:
    """Raise unless ``obj`` round-trips through ``torch.load(weights_only=True)``."""
    if isinstance(obj, Tensor) or type(obj) in (*_SAFE_SCALARS, torch.Size):
        return
    if type(obj) in _SAFE_CONTAINERS:
        if isinstance(obj, dict):
            for key, value in obj.items():
                _check_weights_only_safe(key, f"{where} key {key!r}")
                _check_weights_only_safe(value, f"{where}[{key!r}]")
        else:
            for i, value in enumerate(obj):
                _check_weights_only_safe(value, f"{where}[{i}]")
        return
    raise ValueError(
        f"Parameter `{where.split('[')[0]}` should hold only tensors, numbers, strings, None and "
        f"dict/list/tuple/set of those (what torch.load(weights_only=True) reads back). "
        f"Found `{where}` of type {type(obj).__module__}.{type(obj).__qualname__}."
    )


def _describe(obj: Any) -> str:
    if isinstance(obj, Mapping):
        keys = [repr(k) for k in list(obj)[:_MAX_LISTED]]
        more = ", ..." if len(obj) > _MAX_LISTED else ""
        return f"a dict with keys [{', '.join(keys)}{more}]"
    return f"an object of type {type(obj).__name__}"


def _anl_payload(obj: Any) -> Mapping[str, Any] | None:
    """Our model dict: ``obj`` itself, or ``obj["model"]`` (a training-run checkpoint)."""
    if isinstance(obj, Mapping):
        if obj.get("format") == FORMAT:
            return obj
        inner = obj.get("model")
        if isinstance(inner, Mapping) and inner.get("format") == FORMAT:
            return inner
    return None


def _check_payload(payload: Mapping[str, Any], path: PathLike) -> None:
    version = payload.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise ValueError(
            f"Checkpoint '{path}' has format version {version!r}; this code reads versions "
            f"<= {VERSION}."
        )
    problems = []
    if payload.get("arch") not in MODELS:
        problems.append(f"arch = {payload.get('arch')!r} (known: {model_names()})")
    for key in ("num_classes", "in_channels"):
        if not isinstance(payload.get(key), int):
            problems.append(f"{key} = {payload.get(key)!r}")
    if not isinstance(payload.get("model_kwargs"), Mapping):
        problems.append(f"model_kwargs of type {type(payload.get('model_kwargs')).__name__}")
    if not isinstance(payload.get("state_dict"), Mapping):
        problems.append(f"state_dict of type {type(payload.get('state_dict')).__name__}")
    if problems:
        raise ValueError(f"Checkpoint '{path}' is damaged: " + "; ".join(problems) + ".")


def _target(arch: str, num_classes: int, in_channels: int | None, kwargs: Mapping) -> str:
    extra = "".join(f", {k}={v!r}" for k, v in kwargs.items())
    return f"architecture {arch!r} (num_classes={num_classes}, in_channels={in_channels}{extra})"


def _device(map_location: Any) -> torch.device | None:
    if isinstance(map_location, (str, torch.device)):
        return torch.device(map_location)
    return None


def save_model_checkpoint(
    path: PathLike,
    model: nn.Module,
    *,
    arch: str,
    num_classes: int,
    in_channels: int | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write ``model`` in our format (see the module docstring) with :func:`atomic_save`.

    The model is unwrapped from DDP/``torch.compile`` and its tensors are saved on the CPU.
    The input normalisation (``model.normalization``) is added to ``model_kwargs`` as
    ``mean``/``std`` unless given there. Before writing, the model is rebuilt on the meta
    device from ``(arch, num_classes, in_channels, model_kwargs)`` and compared with ``model``
    (keys, shapes, normalisation), so a checkpoint that :func:`load_model` could not restore
    is never written.

    Args:
        path: Destination file.
        model: The model.
        arch: Its registry name (:func:`~anl.integrations.mtard.models.model_names`).
        num_classes: Its number of outputs.
        in_channels: Its input channels; ``None`` reads ``model.in_channels``.
        model_kwargs: The extra arguments it was built with (``build_model(arch, ..., **kw)``).
        extra: More top-level entries (epoch, metrics, ...): tensors, numbers, strings, None,
            and dict/list/tuple/set of those.

    Raises:
        ValueError: for an unknown ``arch``, arguments that do not describe ``model``, or
            ``extra`` entries that are reserved or not loadable with ``weights_only=True``.
    """
    model = unwrap_model(model)
    if arch not in MODELS:
        raise ValueError(
            f"Parameter `arch` should be one of {model_names()}. Found `arch = {arch!r}`."
        )
    for name, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        actual = getattr(model, name, None)
        if value is not None and actual is not None and value != actual:
            raise ValueError(
                f"Parameter `{name}` should match the model ({actual}). Found `{name} = {value!r}`."
            )
    if in_channels is None:
        in_channels = getattr(model, "in_channels", None)
        if in_channels is None:
            raise ValueError("Parameter `in_channels` should be given: the model does not say.")
    kwargs = dict(model_kwargs or {})
    clash = [k for k in ("num_classes", "in_channels") if k in kwargs]
    if clash:
        raise ValueError(
            f"Parameter `model_kwargs` should not contain {clash}: they are separate arguments."
        )
    if hasattr(model, "normalization") and "mean" not in kwargs and "std" not in kwargs:
        norm = model.normalization
        kwargs["mean"], kwargs["std"] = (None, None) if norm is None else norm
    _check_weights_only_safe(kwargs, "model_kwargs")
    extra = dict(extra or {})
    reserved = [k for k in extra if k in _RESERVED]
    if reserved:
        raise ValueError(
            f"Parameter `extra` should not use the reserved keys {list(_RESERVED)}. "
            f"Found {reserved}."
        )
    _check_weights_only_safe(extra, "extra")

    state_dict = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with torch.device("meta"):
        rebuilt = build_model(arch, num_classes, in_channels, **kwargs)
    try:
        check_state_dict(
            rebuilt,
            state_dict,
            source="the model's state dict",
            target=_target(arch, num_classes, in_channels, kwargs) + " rebuilt from the arguments",
        )
    except ValueError as exc:
        raise ValueError(
            f"{exc}\n  Pass the arguments the model was built with in `model_kwargs`."
        ) from None
    if getattr(rebuilt, "normalization", None) != getattr(model, "normalization", None):
        raise ValueError(
            f"Parameter `model_kwargs` should reproduce the model's input normalisation "
            f"{getattr(model, 'normalization', None)}; it gives {rebuilt.normalization}."
        )
    checkpoint = {
        "format": FORMAT,
        "version": VERSION,
        "arch": arch,
        "num_classes": num_classes,
        "in_channels": in_channels,
        "model_kwargs": kwargs,
        "state_dict": state_dict,
        **extra,
    }
    atomic_save(checkpoint, path, digest=True)


def load_model(path: PathLike, map_location: Any = "cpu") -> nn.Module:
    """Rebuild and load a model saved by :func:`save_model_checkpoint`, in eval mode.

    Also accepts a training-run checkpoint that nests our model dict under ``"model"``.
    The model is moved to ``map_location`` when that is a device (string or ``torch.device``).

    Raises:
        FileNotFoundError, ValueError: see :func:`safe_load` (a content hash that does not
            match raises ``CorruptFileError``); ``ValueError`` also when the file is not in our
            format (use :func:`load_teacher` for RobustBench/TRADES files) or its weights do
            not fit the recorded architecture.
    """
    checkpoint, hashed = safe_load_verified(path, map_location)
    payload = _anl_payload(checkpoint)
    if payload is None:
        raise ValueError(
            f"'{path}' is not an {FORMAT!r} checkpoint (found {_describe(checkpoint)}). "
            "Third-party weights (RobustBench, TRADES) load with "
            "load_teacher(path, arch=..., num_classes=...)."
        )
    _check_payload(payload, path)
    if not hashed:
        warn_unhashed(path)
    arch, num_classes, in_channels = payload["arch"], payload["num_classes"], payload["in_channels"]
    kwargs = dict(payload["model_kwargs"])
    return _build_and_load(
        path, payload["state_dict"], arch, num_classes, in_channels, kwargs, map_location
    )


def _build_and_load(
    path: PathLike,
    state_dict: Mapping[str, Any],
    arch: str,
    num_classes: int,
    in_channels: int | None,
    kwargs: dict[str, Any],
    map_location: Any,
) -> nn.Module:
    model = build_model(arch, num_classes, in_channels, **kwargs)
    device = _device(map_location)
    if device is not None:
        model.to(device)
    load_state_dict_strict(
        model,
        strip_prefixes(state_dict),
        source=f"checkpoint '{path}'",
        target=_target(arch, num_classes, getattr(model, "in_channels", in_channels), kwargs),
    )
    return model.eval()


# --------------------------------------------------------------------------------------------
# Teachers
# --------------------------------------------------------------------------------------------


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())
    )


def _third_party_state_dict(checkpoint: Any, path: PathLike) -> Mapping[str, Tensor]:
    if _is_state_dict(checkpoint):
        return checkpoint
    if isinstance(checkpoint, Mapping):
        for key in ("state_dict", "model_state_dict"):
            if _is_state_dict(checkpoint.get(key)):
                return checkpoint[key]
    raise ValueError(
        f"'{path}' holds no state dict: expected a dict of tensors, possibly under "
        f"'state_dict' or 'model_state_dict'; found {_describe(checkpoint)}."
    )


def load_teacher(
    path: PathLike,
    *,
    arch: str,
    num_classes: int,
    in_channels: int | None = None,
    fmt: str = "auto",
    model_kwargs: Mapping[str, Any] | None = None,
    map_location: Any = "cpu",
) -> nn.Module:
    """Load a teacher's weights into ``build_model(arch, num_classes, in_channels, **kw)``.

    Formats (``fmt``):

    * ``"anl"`` — our format (also nested under ``"model"``); its ``arch``/``num_classes``
      (and ``in_channels`` when given) must match the arguments; ``model_kwargs`` override
      the recorded ones.
    * ``"robustbench"`` — a RobustBench checkpoint (``robustbench_path(...)``): a state dict,
      possibly under ``"state_dict"`` or ``"model_state_dict"``.
    * ``"trades"`` — TRADES/RSLAD ``model_cifar_wrn.pt``: a plain state dict. Read exactly as
      ``"robustbench"``.
    * ``"auto"`` — ours if the file says so, else a (wrapped) state dict.

    ``module.``/``_orig_mod.`` prefixes are removed; loading is strict (see
    :func:`check_state_dict`). E.g. TRADES' CIFAR-10 teacher::

        load_teacher(robustbench_path("models", "cifar10", "Zhang2019Theoretically"),
                     arch="wrn34_10", num_classes=10)

    and Gowal et al.'s CIFAR-100 one (normalising with CIFAR-100 statistics)::

        load_teacher(robustbench_path("models", "cifar100", "Gowal2020Uncovering"),
                     arch="wrn70_16", num_classes=100)

    Returns:
        The model in eval mode, on ``map_location`` when that is a device.
    """
    if fmt not in TEACHER_FORMATS:
        raise ValueError(
            f"Parameter `fmt` should be one of {list(TEACHER_FORMATS)}. Found `fmt = {fmt!r}`."
        )
    if arch not in MODELS:
        raise ValueError(
            f"Parameter `arch` should be one of {model_names()}. Found `arch = {arch!r}`."
        )
    checkpoint, hashed = safe_load_verified(path, map_location)
    payload = _anl_payload(checkpoint)
    if fmt == "anl" or (fmt == "auto" and payload is not None):
        if payload is None:
            raise ValueError(
                f"'{path}' is not an {FORMAT!r} checkpoint (found {_describe(checkpoint)}); "
                "use fmt='robustbench' or fmt='trades' for a state dict."
            )
        _check_payload(payload, path)
        if not hashed:
            warn_unhashed(path)
        for name, wanted in (
            ("arch", arch),
            ("num_classes", num_classes),
            ("in_channels", in_channels),
        ):
            if wanted is not None and payload[name] != wanted:
                raise ValueError(
                    f"Parameter `{name}` should match the checkpoint '{path}' "
                    f"({payload[name]!r}). Found `{name} = {wanted!r}`."
                )
        kwargs = {**payload["model_kwargs"], **(model_kwargs or {})}
        return _build_and_load(
            path,
            payload["state_dict"],
            arch,
            num_classes,
            payload["in_channels"],
            kwargs,
            map_location,
        )
    state_dict = _third_party_state_dict(checkpoint, path)
    return _build_and_load(
        path, state_dict, arch, num_classes, in_channels, dict(model_kwargs or {}), map_location
    )


def robustbench_path(model_dir: PathLike, dataset: str, name: str, threat: str = "Linf") -> Path:
    """RobustBench's location of a model: ``<model_dir>/<dataset>/<threat>/<name>.pt``.

    >>> robustbench_path("models", "cifar10", "Zhang2019Theoretically").as_posix()
    'models/cifar10/Linf/Zhang2019Theoretically.pt'
    """
    if dataset not in ROBUSTBENCH_DATASETS:
        raise ValueError(
            f"Parameter `dataset` should be one of {list(ROBUSTBENCH_DATASETS)}. "
            f"Found `dataset = {dataset!r}`."
        )
    if threat not in ROBUSTBENCH_THREATS:
        raise ValueError(
            f"Parameter `threat` should be one of {list(ROBUSTBENCH_THREATS)}. "
            f"Found `threat = {threat!r}`."
        )
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(
            f"Parameter `name` should be a RobustBench model name such as "
            f"'Zhang2019Theoretically'. Found `name = {name!r}`."
        )
    return Path(model_dir) / dataset / threat / f"{name}.pt"
