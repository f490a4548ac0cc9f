"""irp.server."""
