"""The SixChat user agent: the service, its store (contacts, history, outbox) and control socket."""
