"""``python -m irp.caadmin``: the ``irp-ca`` command."""

from irp.caadmin import main

main()
