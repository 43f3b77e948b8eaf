"""User extensions: a registry by name that also accepts import paths ``package.module:name``.

The architectures (:data:`~..models.MODELS`) and the datasets (:data:`~..data.registry.DATASETS`)
are :class:`Registry` tables. A registered name is looked up as in a ``dict``; a key of the form
``package.module:attribute`` (an *import path*, as in entry points) imports ``package.module``
on first use and turns its ``attribute`` into an entry. A configuration, a checkpoint and a
profile can therefore name a user's model or dataset by its import path, and the name works
wherever the registry is read (a resumed run, a spawned worker, ``anl-mtard evaluate``), with no
registration step to repeat.

Example:
    >>> table = Registry("thing", {"one": 1}, adapt=lambda path, obj: obj)
    >>> table["one"], "math:pi" in table, round(table["math:pi"], 2), sorted(table)
    (1, True, 3.14, ['one'])
    >>> table.resolve("two", parameter="thing")
    Traceback (most recent call last):
    ...
    anl.integrations.mtard.checks.ArgumentError: Parameter `thing` should be one of ['one'] or an import path 'package.module:attribute'. Found `thing = 'two'`.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from ..checks import ArgumentError, fail

T = TypeVar("T")

IMPORT_PATH = "an import path 'package.module:attribute'"
"""How an import path is described in messages and help texts."""

_IMPORT_PATH_RE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def is_import_path(name: object) -> bool:
    """Whether ``name`` reads ``package.module:attribute`` (dotted identifiers around a colon).

    Example:
        >>> is_import_path("my_models.nets:tiny_cnn"), is_import_path("resnet18")
        (True, False)
    """
    return isinstance(name, str) and _IMPORT_PATH_RE.fullmatch(name) is not None


def import_object(path: str) -> Any:
    """The object that the import path ``package.module:attribute`` names.

    Raises:
        ArgumentError: ``path`` is not an import path.
        ImportError: the module cannot be imported.
        AttributeError: the module has no such attribute.
        Exception: whatever the module raises while it is imported.
    """
    if not is_import_path(path):
        fail("path", path, IMPORT_PATH)
    module_name, _, attribute = path.partition(":")
    found: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        found = getattr(found, part)
    return found


class Registry(dict[str, T], Generic[T]):
    """A table ``name -> entry`` whose keys may also be import paths, resolved when first used.

    Iteration, ``len`` and ``sorted`` see the registered names only; ``in``, ``[]``, ``get``
    and :meth:`resolve` also accept an import path, whose object ``adapt(path, object)`` turns
    into an entry; the entry is kept for the rest of the process.

    Args:
        kind: what an entry is, for messages (``"architecture"``).
        entries: the built-in entries.
        adapt: ``adapt(path, obj) -> entry`` for an imported object; it raises a ``ValueError``
            that completes "Found `name = path`, which ..." when ``obj`` does not fit.
    """

    def __init__(self, kind: str, entries: Mapping[str, T], adapt: Callable[[str, Any], T]) -> None:
        super().__init__(entries)
        self.kind = kind
        self._adapt = adapt
        self._imported: dict[str, T] = {}

    def __missing__(self, name: str) -> T:
        if not is_import_path(name):
            raise KeyError(name)
        return self.resolve(name)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        if super().__contains__(name):
            return True
        if not is_import_path(name):
            return False
        try:
            self.resolve(name)
        except ArgumentError:
            return False
        return True

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        """The entry of ``name`` (a registered name or an import path), else ``default``."""
        try:
            return self.resolve(name)
        except ArgumentError:
            return default

    def choices(self) -> str:
        """``"one of [...] or an import path 'package.module:attribute'"``, for messages."""
        return f"one of {sorted(self)} or {IMPORT_PATH}"

    def resolve(self, name: str, *, parameter: str = "name") -> T:
        """The entry of ``name``, a registered name or an import path.

        Raises:
            ArgumentError: naming ``parameter``, when ``name`` is neither a registered name nor
                an import path whose module imports and holds a suitable attribute.
        """
        if isinstance(name, str) and super().__contains__(name):
            return super().__getitem__(name)
        if not is_import_path(name):
            fail(parameter, name, self.choices())
        if name not in self._imported:
            try:
                found = import_object(name)
            except (ImportError, AttributeError) as exc:
                raise ArgumentError(
                    f"Parameter `{parameter}` should be {self.choices()}. Found "
                    f"`{parameter} = {name!r}`, which does not import "
                    f"({type(exc).__name__}: {exc})."
                ) from exc
            try:
                self._imported[name] = self._adapt(name, found)
            except ValueError as exc:
                raise ArgumentError(
                    f"Parameter `{parameter}` should be {self.choices()}. Found "
                    f"`{parameter} = {name!r}`, which {exc}"
                ) from exc
        return self._imported[name]

    def register(self, name: str, entry: T, *, replace: bool = False) -> None:
        """Add ``entry`` under ``name`` (a non-empty name without ``:``).

        Raises:
            ArgumentError: for an invalid name, or one already registered unless ``replace``.
        """
        if not isinstance(name, str) or not name or ":" in name or name != name.strip():
            fail("name", name, f"a non-empty {self.kind} name without ':' or outer spaces")
        if super().__contains__(name) and not replace:
            fail("name", name, f"a new {self.kind} name (pass replace=True to replace it)")
        self[name] = entry
