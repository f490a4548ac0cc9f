"""What both atheris harnesses share: the ``--ignore-known`` option and running atheris.

Run a harness as ``python fuzz/fuzz_<name>.py CORPUS [libFuzzer options] [--ignore-known]``;
with ``--ignore-known``, failures listed in ``KNOWN_DEFECTS`` (``test/irp/fuzzing.py``)
do not stop the run.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import atheris

#: Whether failures listed as known defects are ignored (the option is removed from argv,
#: which libFuzzer reads).
IGNORE_KNOWN = "--ignore-known" in sys.argv
if IGNORE_KNOWN:
    sys.argv.remove("--ignore-known")


def is_ignored(error: BaseException) -> bool:
    """True if ``--ignore-known`` was given and ``error`` is a known defect."""
    if not IGNORE_KNOWN:
        return False
    from test.irp.fuzzing import known_defect

    return known_defect(error) is not None


def run(test_one_input: Callable[[bytes], None]) -> None:
    """Hand ``test_one_input`` to atheris with the command line's options."""
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
