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
    "sixchat_handshakes": ("5",),
    "sixchat_messages": ("6",),
    "sixchat_bulk": ("7",),
    "irp_scale": ("8",),
    "irp_idle": ("9a", "9b"),
}
