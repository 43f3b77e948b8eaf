"""Optional dependencies, imported only by the functions that need them.

The MTARD package needs torch and NumPy; progress bars (tqdm) and figures (matplotlib) come
with ``pip install "anl[mtard]"``, AutoAttack with ``anl[autoattack]`` and TensorBoard logging
with ``anl[tensorboard]``. :func:`require` imports one of them where it is used, and a missing
one raises an :class:`ImportError` of one line that names the extra, so that
``anl-mtard --help`` and every run without bars, figures or TensorBoard work without them.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Iterator
from types import ModuleType
from typing import Any

#: The pip extra of ``anl`` that installs each optional top-level package.
EXTRAS = {
    "tqdm": "mtard",
    "matplotlib": "mtard",
    "pyautoattack": "autoattack",
    "torch.utils.tensorboard": "tensorboard",
}


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` (a key of :data:`EXTRAS` or a submodule of one) for ``purpose``.

    Raises:
        ImportError: one line naming the package and the extra that installs it.

    Example:
        >>> require("pyautoattack.no_such_module", "AutoAttack")
        Traceback (most recent call last):
        ...
        ImportError: AutoAttack needs the optional package `pyautoattack`: pip install "anl[autoattack]"
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = next((k for k in EXTRAS if module == k or module.startswith(k + ".")), module)
        package = "tensorboard" if top.endswith("tensorboard") else top.split(".")[0]
        raise ImportError(
            f"{purpose} needs the optional package `{package}`: "
            f'pip install "anl[{EXTRAS.get(top, "all")}]"'
        ) from exc


class NoBar:
    """What :func:`progress_bar` returns when bars are off: iterates, ignores updates."""

    def __init__(self, iterable: Iterable[Any] | None = None) -> None:
        self.iterable = iterable

    def __iter__(self) -> Iterator[Any]:
        return iter(self.iterable if self.iterable is not None else ())

    def __enter__(self) -> NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(
    iterable: Iterable[Any] | None = None,
    *,
    desc: str,
    enabled: bool,
    total: int | None = None,
    leave: bool = False,
    **kwargs: Any,
) -> Any:
    """A tqdm bar over ``iterable`` (or one updated by hand), or a :class:`NoBar` when not
    ``enabled``: tqdm is imported only for a bar that is shown."""
    if not enabled:
        return NoBar(iterable)
    tqdm = require("tqdm.auto", "Progress bars (off with --no-progress)").tqdm
    return tqdm(iterable, desc=desc, total=total, leave=leave, dynamic_ncols=True, **kwargs)


def progress_write(text: str) -> None:
    """Print ``text`` above the progress bars shown (tqdm's ``write``)."""
    require("tqdm.auto", "Progress bars (off with --no-progress)").tqdm.write(text)
