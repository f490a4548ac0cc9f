"""``python -m irp.cli``: the ``irp`` command."""

from irp.cli import main

main()
