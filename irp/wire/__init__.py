"""IRP's wire format: the message envelope, signed records and the elements of each operation."""
