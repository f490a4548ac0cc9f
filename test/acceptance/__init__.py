"""Acceptance tests: the INSTALLED commands (``twistd irp``, ``twistd sixchat``, ``irp``,
``sixchat``, found next to ``sys.executable``) run as separate processes with the shipped
defaults, over real sockets on loopback, as a user would run them.

They test what pip installed, not the checkout: after changing the code, run
``.venv/bin/pip install --no-deps .`` again before running them. They are skipped when the
commands are not installed next to the Python running the tests.
"""
