"""common.wire."""
