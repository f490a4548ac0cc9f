"""The sixid server (see docs/sixid.rst): never imports irp; the registry passes its parts in."""
