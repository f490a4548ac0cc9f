"""The sixid server (placeholder of the sixid-store branch until sixid-server is merged)."""
