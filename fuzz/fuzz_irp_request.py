"""Coverage-guided fuzzing (atheris/libFuzzer) of the IRP parsers.

The first input byte picks the target; the rest is its input:

0. ``irp.wire.messages.parse_request`` (then the registry's field check of the operation);
1. ``irp.wire.messages.parse_response``;
2. the record parsers of ``irp.wire.elements`` on the parsed document;
3. ``common.wire.framing.FrameDecoder`` fed in chunks cut at the bytes ``0xff``;
4. ``common.wire.xmlcodec.parse_document``.

Only the package's own errors (``IRPError``, ``FrameError``, ``XMLRejected``) may escape;
anything else is a crash that libFuzzer saves as ``crash-<hash>``. With ``--ignore-known``
the open defects of ``test.irp.fuzzing.KNOWN_DEFECTS`` do not count as crashes.

Run (see fuzz/README.rst)::

    PYTHONPATH=. python fuzz/make_corpus.py
    PYTHONPATH=. python fuzz/fuzz_irp_request.py fuzz/corpus/irp -max_total_time=600
"""

from __future__ import annotations

import atheris
from fuzzing import is_ignored, run

with atheris.instrument_imports(include=["irp"]):
    from common.wire.framing import FrameDecoder, FrameError
    from common.wire.xmlcodec import XMLRejected, parse_document
    from irp import errors
    from irp.wire.elements import (
        parse_addresses,
        parse_certificate,
        parse_pkcs12,
        parse_user,
    )
    from irp.wire.fields import check_fields
    from irp.wire.messages import parse_request, parse_response, parse_xml

#: Attributes and children of every operation (from irp.server.dispatch's table).
OPERATIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}


def _operations() -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    if not OPERATIONS:
        from irp.server.dispatch import OPERATIONS as table

        OPERATIONS.update({name: (op.attributes, op.children) for name, op in table.items()})
    return OPERATIONS


def target(data: bytes) -> None:
    if not data:
        return
    which, body = data[0] % 5, data[1:]
    if which == 0:
        request = parse_request(body)
        spec = _operations().get(request.operation)
        if spec is not None:
            check_fields(request.element, *spec)
    elif which == 1:
        parse_response(body)
    elif which == 2:
        root = parse_xml(body)
        for parser in (parse_user, parse_addresses, parse_certificate, parse_pkcs12):
            try:
                parser(root)
            except errors.IRPError:
                pass
    elif which == 3:
        decoder = FrameDecoder(4096)
        for chunk in body.split(b"\xff"):
            decoder.feed(chunk)
    else:
        parse_document(body)


def test_one_input(data: bytes) -> None:
    try:
        target(data)
    except (errors.IRPError, FrameError, XMLRejected):
        pass
    except Exception as error:
        if is_ignored(error):
            return
        raise


if __name__ == "__main__":
    run(test_one_input)
