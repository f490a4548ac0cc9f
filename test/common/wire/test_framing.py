"""Tests for :mod:`common.wire.framing`: the 4-byte length-prefixed frames of IRP and SixChat."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial import unittest

from common.wire.framing import (
    HEADER_SIZE,
    EmptyFrame,
    FrameDecoder,
    FrameError,
    FrameTooLarge,
    encode_frame,
)


class EncodeFrameTests(unittest.SynchronousTestCase):
    """encode_frame."""

    def test_length_prefix(self) -> None:
        """The payload follows its length as a 4-byte big-endian unsigned integer."""
        self.assertEqual(encode_frame(b"hello"), b"\x00\x00\x00\x05hello")
        self.assertEqual(HEADER_SIZE, 4)

    def test_large_payload(self) -> None:
        """Lengths above 255 and 65535 use the upper bytes."""
        payload = b"x" * 70000
        self.assertEqual(encode_frame(payload)[:4], struct.pack(">I", 70000))

    def test_empty_refused(self) -> None:
        """An empty payload cannot be framed."""
        self.assertRaises(EmptyFrame, encode_frame, b"")


class OneFrameAtATimeTests(unittest.SynchronousTestCase):
    """FrameDecoder.append, next_frame and take_pending (a reader that stops between frames)."""

    def test_one_frame_per_call(self) -> None:
        """next_frame returns the frames one by one, then None."""
        decoder = FrameDecoder(100)
        decoder.append(encode_frame(b"one") + encode_frame(b"two"))
        self.assertEqual(decoder.next_frame(), b"one")
        self.assertEqual(decoder.next_frame(), b"two")
        self.assertIsNone(decoder.next_frame())

    def test_bad_header_raises_before_its_body(self) -> None:
        """A header over the cap raises as soon as it has arrived; the error stays."""
        decoder = FrameDecoder(10)
        decoder.append(struct.pack(">I", 11))
        self.assertRaises(FrameTooLarge, decoder.next_frame)
        self.assertRaises(FrameTooLarge, decoder.append, b"x")
        decoder = FrameDecoder(10)
        decoder.append(struct.pack(">I", 0))
        self.assertRaises(EmptyFrame, decoder.next_frame)

    def test_take_pending_returns_the_bytes_as_received(self) -> None:
        """The bytes not yet decoded come back unchanged, a header already read included."""
        decoder = FrameDecoder(100)
        rest = encode_frame(b"next layer")[:7]
        decoder.append(encode_frame(b"one") + rest)
        self.assertEqual(decoder.next_frame(), b"one")
        self.assertIsNone(decoder.next_frame())  # reads the next header
        self.assertEqual(decoder.take_pending(), rest)
        self.assertEqual(decoder.pending, 0)
        self.assertEqual(decoder.take_pending(), b"")


class FrameDecoderTests(unittest.SynchronousTestCase):
    """FrameDecoder."""

    def test_whole_frames(self) -> None:
        """Several frames in one chunk come out in order."""
        decoder = FrameDecoder(100)
        data = encode_frame(b"one") + encode_frame(b"two") + encode_frame(b"three")
        self.assertEqual(decoder.feed(data), [b"one", b"two", b"three"])
        self.assertFalse(decoder.in_frame)
        self.assertEqual(decoder.pending, 0)

    def test_byte_by_byte(self) -> None:
        """A frame fed one byte at a time comes out once, when complete."""
        decoder = FrameDecoder(100)
        data = encode_frame(b"payload")
        results = []
        for index in range(len(data)):
            results.extend(decoder.feed(data[index : index + 1]))
            if index < len(data) - 1:
                self.assertTrue(decoder.in_frame)
                self.assertEqual(results, [])
        self.assertEqual(results, [b"payload"])
        self.assertFalse(decoder.in_frame)

    def test_complete_header_without_body_is_in_frame(self) -> None:
        """A header alone is a started frame: a peer that stops after it is mid-frame."""
        decoder = FrameDecoder(100)
        self.assertEqual(decoder.feed(struct.pack(">I", 10)), [])
        self.assertTrue(decoder.in_frame)
        self.assertEqual(decoder.pending, HEADER_SIZE)

    def test_partial_header_is_in_frame(self) -> None:
        """Two bytes of a header already count as a started frame."""
        decoder = FrameDecoder(100)
        self.assertEqual(decoder.feed(b"\x00\x00"), [])
        self.assertTrue(decoder.in_frame)
        self.assertEqual(decoder.pending, 2)

    def test_exactly_the_cap(self) -> None:
        """A frame of exactly max_frame bytes is accepted."""
        decoder = FrameDecoder(10)
        self.assertEqual(decoder.feed(encode_frame(b"0123456789")), [b"0123456789"])

    def test_over_the_cap(self) -> None:
        """A header announcing more than max_frame is refused at once, before the body."""
        decoder = FrameDecoder(10)
        error = self.assertRaises(FrameTooLarge, decoder.feed, struct.pack(">I", 11))
        self.assertEqual((error.length, error.cap), (11, 10))
        self.assertIsInstance(error, FrameError)
        self.assertIn("11", str(error))

    def test_huge_announced_length(self) -> None:
        """A 4 GiB announcement is refused without buffering anything."""
        decoder = FrameDecoder(1024)
        self.assertRaises(FrameTooLarge, decoder.feed, b"\xff\xff\xff\xff")

    def test_empty_frame_refused(self) -> None:
        """A zero length is a framing error."""
        decoder = FrameDecoder(10)
        self.assertRaises(EmptyFrame, decoder.feed, b"\x00\x00\x00\x00")

    def test_frames_before_an_error_are_kept(self) -> None:
        """An oversized frame after good ones: the good ones come out, the error is kept
        and raised by the next call (the stream is dead)."""
        decoder = FrameDecoder(10)
        self.assertEqual(decoder.feed(encode_frame(b"ok") + struct.pack(">I", 50)), [b"ok"])
        self.assertIsInstance(decoder.error, FrameTooLarge)
        self.assertRaises(FrameTooLarge, decoder.feed, b"more")

    def test_cap_can_change(self) -> None:
        """max_frame may be raised between calls."""
        self.assertRaises(FrameTooLarge, FrameDecoder(4).feed, encode_frame(b"12345"))
        decoder = FrameDecoder(4)
        decoder.max_frame = 5
        self.assertEqual(decoder.feed(encode_frame(b"12345")), [b"12345"])

    def test_pending_counts_header_and_body(self) -> None:
        """pending counts every byte of the incomplete frame, header included."""
        decoder = FrameDecoder(16)
        decoder.feed(struct.pack(">I", 16) + b"x" * 15)
        self.assertEqual(decoder.pending, HEADER_SIZE + 15)
        self.assertEqual(decoder.feed(b"y"), [b"x" * 15 + b"y"])
        self.assertEqual(decoder.pending, 0)

    @given(st.lists(st.binary(min_size=1, max_size=300), max_size=20), st.data())
    def test_any_split_gives_the_same_frames(self, payloads: list[bytes], data: st.DataObject) -> None:
        """However the stream is cut into chunks, the same frames come out."""
        stream = b"".join(encode_frame(payload) for payload in payloads)
        cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
        decoder = FrameDecoder(300)
        frames: list[bytes] = []
        previous = 0
        for cut in [*cuts, len(stream)]:
            frames.extend(decoder.feed(stream[previous:cut]))
            previous = cut
        self.assertEqual(frames, payloads)
        self.assertFalse(decoder.in_frame)
