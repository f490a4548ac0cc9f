"""Benchmarks of IRP and SixChat against the bare stack they run on.

Run everything with ``python -m bench`` (``--quick`` for the short CI run); see
``bench/README.rst``. Each figure lives in its own module, with a ``run(ctx)`` function
returning :class:`bench.harness.Figure` objects; :data:`MODULES` is the order they run in.
"""

#: The benchmark modules, in the order ``python -m bench`` runs them, with the figures
#: each one reports.
MODULES: dict[str, tuple[str, ...]] = {
    "irp_lookups": ("1",),
    "irp_sessions": ("2",),
    "irp_registrations": ("3", "3b"),
    "irp_issuance": ("4",),
    "sixchat_handshakes": ("5", "5b"),
    "sixchat_messages": ("6", "6b"),
    "sixchat_bulk": ("7",),
    "relay_throughput": ("11",),
    "irp_mixed": ("1m", "1m-off"),
    "irp_scale": ("8",),
    "irp_idle": ("9a", "9b", "9c"),
    "irp_postgres": ("pg1", "pg2", "pg3", "pg4"),
    "abuse": ("10a", "10b", "10c"),
    "intermediary_deposits": ("12",),
    "sixid_lookups": ("13a", "13a-p"),
    "sixid_registrations": ("13b", "13b-v"),
    "sixid_watch": ("13c", "13c-w2"),
}

#: Modules run only when ``--only`` names them (they need more than the project's own
#: dependencies, or take long): ``python -m bench --only postgres``; ``--only abuse`` (also
#: ``python -m bench.abuse`` on its own) measures robustness under attack, not speed.
OPT_IN: frozenset[str] = frozenset({"irp_postgres", "abuse"})


def short_name(module: str) -> str:
    """A module's name without its product prefix (``irp_postgres`` -> ``postgres``)."""
    for prefix in ("irp_", "sixchat_"):
        if module.startswith(prefix):
            return module[len(prefix) :]
    return module
