"""The IRP registry server: connection core and adapter, request handling, CA, store, service."""
