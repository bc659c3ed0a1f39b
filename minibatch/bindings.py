"""The API's classes that the engine hands out, bound by the API itself.

Layers point one way (docs/architecture.rst): errors -> store -> engine ->
models/API -> cli/contrib. Yet the engine must give a window function a
``minibatch.Window`` and a custom emitter its ``minibatch.Stream`` (programs
written for minibatch 0.6 rely on both). So the engine never imports them;
``minibatch.models`` registers them here when it is imported, which happens
with any ``import minibatch``.
"""
from __future__ import annotations

from typing import Any

_classes: dict[str, Any] = {}


def bind(**classes: Any) -> None:
    """Register API classes by role (``stream=``, ``window=``); called by minibatch.models at import."""
    _classes.update(classes)


def get(role: str) -> Any:
    """The class registered for ``role``.

    :raises RuntimeError: nothing registered it (minibatch.models was never imported)
    """
    try:
        return _classes[role]
    except KeyError:
        raise RuntimeError(f'no {role} class is bound: import minibatch (which binds minibatch.models) '
                           'before using the engine on its own') from None
