"""IRP's client: the client protocol, typed operations and connecting (with SRV discovery)."""
