"""Connections between peers: the Twisted protocol, peer verification, finding peers and
their addresses through IRP, and handshake admission."""
