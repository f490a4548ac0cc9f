"""The intermediary server."""
