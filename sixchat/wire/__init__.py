"""sixchat.wire."""
