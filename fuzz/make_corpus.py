"""Write the seed corpora of the atheris harnesses: valid messages built with the codecs
and the frames of a real (deterministic) SixChat handshake, each behind its target byte.

    PYTHONPATH=. python fuzz/make_corpus.py [fuzz/corpus]
"""

from __future__ import annotations

import hashlib
import os
import sys

from common.wire.framing import encode_frame


def write(folder: str, seeds: list[bytes]) -> int:
    os.makedirs(folder, exist_ok=True)
    for seed in seeds:
        with open(os.path.join(folder, hashlib.sha1(seed).hexdigest()), "wb") as handle:
            handle.write(seed)
    return len(seeds)


def main() -> None:
    from test.irp.test_fuzz import record_corpus, request_corpus, response_corpus
    from test.sixchat.test_fuzz import document_corpus, recording, session_pair

    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "corpus")
    irp: list[bytes] = []
    irp += [b"\x00" + data for data in request_corpus()]
    irp += [b"\x01" + data for data in response_corpus()]
    irp += [b"\x02" + data for data in record_corpus()]
    irp += [b"\x03" + encode_frame(data) + b"\xff" + encode_frame(data)[:7] for data in request_corpus()[:5]]
    irp += [b"\x04" + data for data in request_corpus()[:5]]
    frames = recording().frames
    secrets = recording()
    sender, _receiver = session_pair()
    from sixchat.wire import application as wire_application
    records = sender.send_message(wire_application.Ping()) + sender.send_data(b"data") + sender.update_keys() + sender.close("bye")
    sixchat: list[bytes] = [b"\x00" + data for data in document_corpus()]
    sixchat += [b"\x01" + frames["M1"], b"\x02" + frames["M2"] + frames["M2b"], b"\x03" + frames["M3"]]
    sixchat += [b"\x04" + secrets.responder_trace["responder_auth"], b"\x05" + records]
    print(f"irp: {write(os.path.join(root, 'irp'), irp)} seeds; sixchat: {write(os.path.join(root, 'sixchat'), sixchat)} seeds")


if __name__ == "__main__":
    main()
