"""Coverage-guided fuzzing (atheris/libFuzzer) of the SixChat parsers and state machines.

The first input byte picks the target; the rest is its input:

0. every parser of ``sixchat.wire.handshake and sixchat.wire.application`` (handshake frame, sealed content, application
   message, close, alert);
1. a fresh responder ``Handshake`` fed the bytes (M1 and what follows);
2. a started initiator ``Handshake`` fed the bytes (M2, M2b...);
3. a responder that received the recorded M1, fed the bytes (M3...);
4. an initiator that received the recorded M2, then the bytes *sealed with the responder's
   real handshake key* as its ``<auth>``: a malicious authenticated peer, which reaches the
   certificate and signature checks;
5. a record-layer ``Session`` fed the bytes.

Only ``SixChatError`` may escape (``receive_data`` of a handshake must not raise at all,
except ``Closed``); anything else is a crash. (Whether only honest frames complete a
handshake is checked by test/sixchat/test_fuzz.py, within one process: the test
certificates, hence the recorded frames, differ from one process to the next.) ``--ignore-known`` skips the open defects of
``test.irp.fuzzing.KNOWN_DEFECTS``.

Run (see fuzz/README.rst)::

    PYTHONPATH=. python fuzz/make_corpus.py
    PYTHONPATH=. python fuzz/fuzz_sixchat_frames.py fuzz/corpus/sixchat -max_total_time=600
"""

from __future__ import annotations

import atheris
from fuzzing import is_ignored, run

with atheris.instrument_imports(include=["sixchat", "irp"]):
    from sixchat import errors
    from sixchat.handshake import Role
    from sixchat.wire import application as wire_application
    from sixchat.wire import handshake as wire_handshake
from test.sixchat.test_fuzz import fresh, recording, sealed_frame, session_pair

PARSERS = (
    wire_handshake.parse_handshake_frame,
    wire_handshake.parse_sealed_content,
    wire_application.parse_application,
    wire_application.parse_close,
    wire_handshake.parse_alert,
)


def target(data: bytes) -> None:
    if not data:
        return
    which, body = data[0] % 6, data[1:]
    recorded = recording()
    if which == 0:
        for parser in PARSERS:
            try:
                parser(body)
            except errors.SixChatError:
                pass
        return
    if which == 5:
        _sender, receiver = session_pair()
        receiver.receive_data(body)
        return
    if which == 1:
        driver = fresh(Role.RESPONDER)
    elif which == 2:
        driver = fresh(Role.INITIATOR)
    elif which == 3:
        driver = fresh(Role.RESPONDER)
        driver.feed(recorded.frames["M1"])
    else:
        driver = fresh(Role.INITIATOR)
        secret = recorded.responder_trace["responder_handshake_traffic_secret"]
        body = recorded.frames["M2"] + sealed_frame(secret, body)
    driver.feed(body)


def test_one_input(data: bytes) -> None:
    try:
        target(data)
    except errors.SixChatError as error:
        if data and data[0] % 6 in (1, 2, 3, 4) and not isinstance(error, errors.Closed):
            raise AssertionError(f"Handshake.receive_data raised {error!r}") from error
    except Exception as error:
        if is_ignored(error):
            return
        raise


if __name__ == "__main__":
    run(test_one_input)
