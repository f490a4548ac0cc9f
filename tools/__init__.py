"""Developer tools kept outside the installed package (the known-answer vector generator)."""
