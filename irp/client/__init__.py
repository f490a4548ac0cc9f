"""irp.client.api."""
