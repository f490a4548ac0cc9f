"""Performing a sans-I/O core's actions in a Twisted adapter, in order and without re-entry.

A core returns a list of actions for each event; performing one may feed the core another
event (a request that completes at once), whose actions must wait for the ones already
queued. :class:`ActionRunner` keeps one queue per adapter and a flag, and runs the queue in
a loop rather than by recursion. Both servers' adapters (IRP's and the intermediary's) use it.
"""

from __future__ import annotations

from typing import Any


class ActionRunner:
    """Mixin for an adapter: call :meth:`_do` with a core's actions; subclasses implement
    :meth:`_perform` for one action. Set ``_actions = []`` and ``_performing = False`` in
    ``__init__`` (a list: an empty deque costs some 600 bytes, on every idle connection)."""

    _actions: list[Any]
    _performing: bool

    def _do(self, actions: list[Any]) -> None:
        """Perform ``actions`` in order (after any being performed already)."""
        self._actions.extend(actions)
        if self._performing:
            return
        self._performing = True
        try:
            while self._actions:
                self._perform(self._actions.pop(0))
        finally:
            self._performing = False

    def _perform(self, action: Any) -> None:
        """Perform one action."""
        raise NotImplementedError
