"""The API's classes that the engine hands out, bound by the API itself.

Layers point one way (docs/architecture.rst): errors -> store -> engine ->
models/API -> cli/contrib. Yet the engine must give a window function a
``minibatch.Window`` and a custom emitter its ``minibatch.Stream`` (programs
written for minibatch 0.6 rely on both). So the engine never imports them;
``minibatch.models`` registers them here when it is imported. ``import minibatch``
does not import it (it needs mongoengine, which the embedded store does not):
it registers a loader instead, called the first time a class is asked for.
"""
from __future__ import annotations

from typing import Any, Callable

_classes: dict[str, Any] = {}
_loader: Callable[[], Any] | None = None


def bind(**classes: Any) -> None:
    """Register API classes by role (``stream=``, ``window=``); called by minibatch.models at import."""
    _classes.update(classes)


def bind_loader(loader: Callable[[], Any]) -> None:
    """Register ``loader``: it binds the classes (imports minibatch.models) when one is first asked for."""
    global _loader
    _loader = loader


def get(role: str) -> Any:
    """The class registered for ``role``, binding them with the registered loader first if needed.

    :raises RuntimeError: nothing registered it (minibatch.models was never imported)
    """
    if role not in _classes and _loader is not None:
        _loader()
    try:
        return _classes[role]
    except KeyError:
        raise RuntimeError(f'no {role} class is bound: import minibatch (which binds minibatch.models) '
                           'before using the engine on its own') from None
