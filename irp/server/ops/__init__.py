"""The registry's operations, one module per group: the handlers :mod:`irp.server.dispatch`
runs (each group a :class:`~irp.server.ops.base.Handlers` over one registry)."""
