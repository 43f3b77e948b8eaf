"""The one error an integration raises when the framework it integrates is not installed."""

from __future__ import annotations

DISTRIBUTION = "adaptive-normalization-loss"


def missing_extra(
    integration: str, error: ModuleNotFoundError, *, module: str, package: str, extra: str
) -> ModuleNotFoundError:
    """The error to raise for ``error``, caught while ``integration`` imported ``module``.

    When ``module`` itself (or its top-level package) is what is missing, the result says in
    one line which package and which extra to install::

        ModuleNotFoundError: anl.integrations.lightning needs pytorch-lightning: pip install "adaptive-normalization-loss[lightning]"

    Any other missing module (a dependency of an installed framework) is ``error`` itself,
    whose message names it. Raise the result ``from None``.
    """
    top_level = module.split(".")[0]
    if error.name is None or error.name.split(".")[0] != top_level:
        return error
    return ModuleNotFoundError(
        f'{integration} needs {package}: pip install "{DISTRIBUTION}[{extra}]"', name=error.name
    )
