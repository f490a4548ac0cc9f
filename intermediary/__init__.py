"""SixChat intermediary: store and forward, sealed messages, relay."""
