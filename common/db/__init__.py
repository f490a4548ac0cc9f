"""common.db."""
