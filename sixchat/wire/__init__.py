"""SixChat's wire format: handshake and application messages (XML)."""
