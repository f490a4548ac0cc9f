"""sixchat.peer."""
