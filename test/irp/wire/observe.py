"""Observing every IRP message the code under test serialises (a test fixture).

:func:`observing_messages` wraps the three serialisers of :mod:`irp.wire.messages`
(:func:`~irp.wire.messages.build_request`, :func:`~irp.wire.messages.ok_response` and
:func:`~irp.wire.messages.error_response`) wherever they were imported, for the duration
of a ``with`` block: the client, the server and the tests alike then hand each message to
the observer. The library itself keeps no hook for this.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import Any

from irp.wire import messages

#: The serialisers observed: every IRP message is made by one of them.
SERIALISERS = ("build_request", "ok_response", "error_response")


def _observed(serialise: Callable[..., bytes], observer: Callable[[bytes], None]) -> Callable[..., bytes]:
    @wraps(serialise)
    def observed(*args: Any, **kwargs: Any) -> bytes:
        payload = serialise(*args, **kwargs)
        observer(payload)
        return payload

    return observed


@contextmanager
def observing_messages(observer: Callable[[bytes], None]) -> Iterator[None]:
    """Give ``observer`` every message serialised inside the block.

    Every module-level name bound to one of the serialisers (``from irp.wire.messages
    import error_response`` included) is rebound to an observing wrapper, and restored
    on the way out.
    """
    originals = {name: getattr(messages, name) for name in SERIALISERS}
    wrappers = {name: _observed(function, observer) for name, function in originals.items()}
    patched: list[tuple[Any, str, Any]] = []
    for module in list(sys.modules.values()):
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        for attribute, value in list(namespace.items()):
            for name, original in originals.items():
                if value is original:
                    patched.append((module, attribute, value))
                    setattr(module, attribute, wrappers[name])
    try:
        yield
    finally:
        for module, attribute, value in reversed(patched):
            setattr(module, attribute, value)


def start_observing(testcase: Any, observer: Callable[[bytes], None]) -> None:
    """Observe messages until ``testcase`` ends (see :func:`observing_messages`)."""
    context = observing_messages(observer)
    context.__enter__()
    testcase.addCleanup(context.__exit__, None, None, None)
