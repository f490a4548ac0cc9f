"""common.pki."""
