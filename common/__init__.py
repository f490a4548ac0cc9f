"""The layer both protocols share: identities, profiles, framing, hardened XML, PKI,
databases, limiters, caches, start-up and command-line helpers.

Nothing here imports ``irp`` or ``sixchat``; errors carry reasons, and each protocol turns
them into its own wire errors.
"""
