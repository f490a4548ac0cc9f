"""irp.wire."""
