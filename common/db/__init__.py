"""Databases: SQL dialects (SQLite, PostgreSQL), connection pools and numbered migrations."""
