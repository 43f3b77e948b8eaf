"""Checkpoints: atomic saving, safe loading, our model format and third-party teachers.

* :func:`atomic_save` writes through a temporary file in the destination directory, ``fsync``
  and ``os.replace``: a reader sees the old file or the new one, never a partial one.
* :func:`safe_load` is ``torch.load(weights_only=True)``: tensors and plain containers only.
  The official MTARD code loads checkpoints with unrestricted unpickling, which runs whatever
  code a file asks for; here such a file is refused with a :class:`ValueError`.
* :func:`save_model_checkpoint` / :func:`load_model` — our model format::

      {"format": "anl-mtard-model", "version": 1, "arch": str, "num_classes": int,
       "in_channels": int, "model_kwargs": dict, "state_dict": dict[str, Tensor], **extra}

  ``model_kwargs`` records the input normalisation too, so a model is rebuilt exactly.
* :func:`load_teacher` — our format, RobustBench's ``<model_dir>/<dataset>/<threat>/<name>.pt``
  files (plain state dicts, possibly wrapped in ``{"state_dict": ...}`` or
  ``{"model_state_dict": ...}``) and TRADES/RSLAD's ``model_cifar_wrn.pt`` (a plain state
  dict). ``module.`` (DataParallel) and ``_orig_mod.`` (``torch.compile``) prefixes are removed.
  Loading is strict; a failure lists the missing keys, the unexpected keys and the shape
  mismatches.

Nothing here touches the network: teachers are read from files only.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import tempfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .models import build_model, model_names

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
)
_PREFIXES = ("module.", "_orig_mod.")
_MAX_LISTED = 10

PathLike = str | os.PathLike


# --------------------------------------------------------------------------------------------
# Saving and loading files
# --------------------------------------------------------------------------------------------


def _umask() -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def atomic_save(obj: Any, path: PathLike) -> None:
    """``torch.save(obj, path)`` without ever leaving a partial file at ``path``.

    The object is written to a temporary file in the same directory (created if needed),
    flushed and ``fsync``-ed, then renamed over ``path`` with ``os.replace`` (atomic on POSIX
    and Windows) and the directory is ``fsync``-ed. If anything fails, the temporary file is
    removed and an existing ``path`` is left untouched. The new file keeps the permission bits
    of the file it replaces (or gets ``0o666 & ~umask``).
    """
    path = Path(path)
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    tmp = tempfile.NamedTemporaryFile(  # noqa: SIM115 (closed below; kept on success)
        mode="wb", dir=directory, prefix=f".{path.name}.", suffix=".tmp", delete=False
    )
    try:
        with tmp:
            torch.save(obj, tmp)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.chmod(tmp.name, mode)
        os.replace(tmp.name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp.name)
        raise
    _fsync_directory(directory)


_GLOBAL_RE = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def safe_load(path: PathLike, map_location: Any = "cpu") -> Any:
    """Load a file written by ``torch.save`` with ``weights_only=True``.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file is truncated, corrupt or not a PyTorch file, or if it stores
            objects that only unrestricted unpickling could rebuild (arbitrary classes,
            NumPy arrays, ...); such files are never unpickled.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Checkpoint file '{path}' does not exist.")
    if path.is_dir():
        raise IsADirectoryError(f"Checkpoint path '{path}' is a directory, not a file.")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        match = _GLOBAL_RE.search(str(exc))
        if match is not None:
            raise ValueError(
                f"Checkpoint '{path}' needs unsafe unpickling: it stores `{match.group(1)}`, "
                "which only unrestricted unpickling (able to run arbitrary code) could rebuild; "
                "it is refused (torch.load with weights_only=True). If you trust the file, "
                "re-save its tensors as a plain state dict."
            ) from exc
        raise _invalid_checkpoint(path, exc) from exc
    except (PermissionError, IsADirectoryError, FileNotFoundError, MemoryError):
        raise
    except RuntimeError as exc:
        if "device" in str(exc).lower() and "archive" not in str(exc):
            raise  # e.g. map_location="cuda" on a machine without CUDA
        raise _invalid_checkpoint(path, exc) from exc
    except Exception as exc:  # EOFError, OSError, KeyError, ...: not a torch.save file
        raise _invalid_checkpoint(path, exc) from exc


def _invalid_checkpoint(path: Path, exc: BaseException) -> ValueError:
    detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    return ValueError(
        f"'{path}' is not a valid checkpoint (truncated, corrupt, or not written by torch.save; "
        f"{path.stat().st_size} bytes): {type(exc).__name__}" + (f": {detail}" if detail else "")
    )


# --------------------------------------------------------------------------------------------
# State dicts
# --------------------------------------------------------------------------------------------


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside ``DataParallel``/``DistributedDataParallel``/``torch.compile`` wrappers."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def strip_prefixes(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Remove leading ``module.`` (DataParallel) and ``_orig_mod.`` (torch.compile) from keys."""
    out: dict[str, Any] = {}
    for key, value in state_dict.items():
        new = key
        while new.startswith(_PREFIXES):
            new = new.split(".", 1)[1]
        if new in out:
            raise ValueError(
                f"State dict keys collide after removing {_PREFIXES} prefixes: {key!r} -> {new!r}."
            )
        out[new] = value
    return out


def _listing(label: str, items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    more = f", ... ({len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
    return f"\n  {len(items)} {label}: {shown}{more}"


def _shape(t: Any) -> tuple[int, ...]:
    return tuple(t.shape)


def check_state_dict(
    model: nn.Module,
    state_dict: Mapping[str, Any],
    *,
    source: str = "the state dict",
    target: str = "the model",
) -> dict[str, Tensor]:
    """Compare ``state_dict`` with ``model.state_dict()`` key by key and shape by shape.

    Returns a copy ready for ``model.load_state_dict(..., strict=True)``, in which:

    * missing ``*.num_batches_tracked`` entries (checkpoints of PyTorch < 0.4.1) are filled
      with the model's own counters;
    * entries for the model's non-persistent buffers (the input normalisation ``mean``/``std``
      that RobustBench's ``DMWideResNet`` saves) are dropped if their values equal the
      model's, and raise a ``ValueError`` naming both values otherwise.

    Works on meta tensors (keys and shapes only).

    Raises:
        ValueError: listing the missing keys, the unexpected keys and the shape mismatches
            (``name: expected (...), found (...)``), at most 10 of each.
    """
    expected = model.state_dict()
    sd = dict(state_dict)
    bad_values = [k for k, v in sd.items() if not isinstance(v, Tensor)]
    if bad_values:
        raise ValueError(
            f"{source} is not a state dict:" + _listing("non-tensor entries", bad_values)
        )
    extra_buffers = {n: b for n, b in model.named_buffers() if n not in expected}
    for key in [k for k in sd if k not in expected and k in extra_buffers]:
        ours, theirs = extra_buffers[key], sd.pop(key)
        same = ours.numel() == theirs.numel() and (
            ours.is_meta
            or theirs.is_meta
            or torch.allclose(
                ours.detach().flatten().double().cpu(),
                theirs.detach().flatten().double().cpu(),
                rtol=0.0,
                atol=1e-4,
            )
        )
        if not same:
            raise ValueError(
                f"{source} stores `{key} = {_values(theirs)}` but {target} uses "
                f"`{key} = {_values(ours)}` (input normalisation). Build the model with the "
                "statistics its weights were trained with, e.g. "
                "model_kwargs={'mean': ..., 'std': ...} or {'dataset': ...}."
            )
    for key, value in expected.items():
        if key.endswith("num_batches_tracked") and key not in sd:
            sd[key] = value.clone()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    mismatched = [
        f"{k}: expected {_shape(expected[k])}, found {_shape(sd[k])}"
        for k in expected
        if k in sd and _shape(sd[k]) != _shape(expected[k])
    ]
    if missing or unexpected or mismatched:
        message = f"{source} does not fit {target}:"
        if missing:
            message += _listing("missing keys", missing)
        if unexpected:
            message += _listing("unexpected keys", unexpected)
        if mismatched:
            message += _listing("shape mismatches", mismatched)
        message += _prefix_hint(missing, unexpected)
        raise ValueError(message)
    return sd


def _values(t: Tensor) -> tuple[float, ...] | str:
    if t.is_meta:
        return f"<meta {tuple(t.shape)}>"
    return tuple(round(float(v), 4) for v in t.detach().flatten().cpu()[:8])


def _prefix_hint(missing: list[str], unexpected: list[str]) -> str:
    if not missing or not unexpected:
        return ""
    heads = {k.split(".", 1)[0] for k in unexpected if "." in k}
    if len(heads) == 1:
        head = heads.pop()
        stripped = {k.split(".", 1)[1] for k in unexpected if "." in k}
        if stripped & set(missing):
            return f"\n  (the checkpoint's keys look prefixed with {head + '.'!r})"
    return ""


def load_state_dict_strict(
    model: nn.Module,
    state_dict: Mapping[str, Any],
    *,
    source: str = "the state dict",
    target: str = "the model",
) -> None:
    """:func:`check_state_dict`, then ``model.load_state_dict(..., strict=True)``."""
    model.load_state_dict(check_state_dict(model, state_dict, source=source, target=target))


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
    if payload.get("arch") not in model_names():
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
    if arch not in model_names():
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
    atomic_save(checkpoint, path)


def load_model(path: PathLike, map_location: Any = "cpu") -> nn.Module:
    """Rebuild and load a model saved by :func:`save_model_checkpoint`, in eval mode.

    Also accepts a training-run checkpoint that nests our model dict under ``"model"``.
    The model is moved to ``map_location`` when that is a device (string or ``torch.device``).

    Raises:
        FileNotFoundError, ValueError: see :func:`safe_load`; ``ValueError`` also when the file
            is not in our format (use :func:`load_teacher` for RobustBench/TRADES files) or its
            weights do not fit the recorded architecture.
    """
    checkpoint = safe_load(path, map_location)
    payload = _anl_payload(checkpoint)
    if payload is None:
        raise ValueError(
            f"'{path}' is not an {FORMAT!r} checkpoint (found {_describe(checkpoint)}). "
            "Third-party weights (RobustBench, TRADES) load with "
            "load_teacher(path, arch=..., num_classes=...)."
        )
    _check_payload(payload, path)
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
    if arch not in model_names():
        raise ValueError(
            f"Parameter `arch` should be one of {model_names()}. Found `arch = {arch!r}`."
        )
    checkpoint = safe_load(path, map_location)
    payload = _anl_payload(checkpoint)
    if fmt == "anl" or (fmt == "auto" and payload is not None):
        if payload is None:
            raise ValueError(
                f"'{path}' is not an {FORMAT!r} checkpoint (found {_describe(checkpoint)}); "
                "use fmt='robustbench' or fmt='trades' for a state dict."
            )
        _check_payload(payload, path)
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
