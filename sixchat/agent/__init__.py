"""sixchat.agent.service."""
