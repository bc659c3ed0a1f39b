"""Shipping the user's function to worker processes.

The standard pickle cannot ship lambdas, closures or functions defined in
``__main__`` by value; cloudpickle can. The function is pickled once per
consumer and unpickled once per worker process (cached by its bytes), so a
window costs only the pickling of its data.
"""
import functools
import hashlib
from typing import Any, Callable

import cloudpickle

_cache = {}
_CACHE_LIMIT = 64


class MarshalledFunction:
    """A picklable wrapper around ``fn`` that survives the trip to any worker process.

    Calling it calls ``fn``. Pickling it carries cloudpickle bytes made once.
    """

    def __init__(self, fn):
        self.fn = fn
        self.payload = cloudpickle.dumps(fn)
        self.key = hashlib.sha1(self.payload).hexdigest()
        functools.update_wrapper(self, fn, updated=())

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def __reduce__(self):
        return _load, (self.key, self.payload)


def _load(key, payload):
    fn = _cache.get(key)
    if fn is None:
        if len(_cache) >= _CACHE_LIMIT:
            _cache.clear()
        fn = _cache[key] = cloudpickle.loads(payload)
    return fn


def marshal(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Return ``fn`` wrapped so that it pickles by value (lambdas and closures included)."""
    return fn if isinstance(fn, MarshalledFunction) else MarshalledFunction(fn)
