"""The registry's tamper-evident audit trail (docs/irp.rst, "The audit trail").

- :mod:`~irp.wire.audit_chain`: entries, their encoding and SHA-384 chain, checkpoints
  (sans I/O);
- :mod:`~irp.wire.audit_verify`: checking a trail and its signed checkpoints (sans I/O);
- :mod:`~irp.server.audit.entries`: which events are recorded, and what their entries say;
- :mod:`~irp.server.audit.recorder`: the listener of the registry's events that appends
  entries in batches and signs checkpoints;
- :mod:`~irp.server.audit.host`: starting and stopping it with the registry process.

The tables are :mod:`irp.server.store.audit`'s; the operations reading them
:mod:`irp.server.ops.audit`'s.
"""
