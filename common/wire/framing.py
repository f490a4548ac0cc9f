"""Length-prefixed framing shared by IRP and SixChat (sans-I/O).

A frame is a 4-byte unsigned big-endian length followed by that many bytes of payload.
Empty frames are not allowed. The decoder never buffers more than one frame's header plus
the cap, so a peer cannot make us hold more than ``max_frame`` bytes.
"""

from __future__ import annotations

import struct

HEADER = struct.Struct(">I")
HEADER_SIZE = HEADER.size


class FrameError(Exception):
    """The byte stream breaks the framing rules; the stream must be closed."""


class FrameTooLarge(FrameError):
    """A frame announces a length over the cap."""

    def __init__(self, length: int, cap: int) -> None:
        super().__init__(f"frame of {length} bytes exceeds the limit of {cap} bytes")
        self.length = length
        self.cap = cap


class EmptyFrame(FrameError):
    """A frame of length zero."""

    def __init__(self) -> None:
        super().__init__("empty frame")


def encode_frame(payload: bytes) -> bytes:
    """Return ``payload`` with its length prefix."""
    if not payload:
        raise EmptyFrame()
    return HEADER.pack(len(payload)) + payload


class FrameDecoder:
    """Incremental decoder: feed bytes, get complete frame payloads.

    ``max_frame`` may be changed between calls (e.g. raised after authentication).
    """

    def __init__(self, max_frame: int) -> None:
        self.max_frame = max_frame
        self._buffer = bytearray()
        self._expected: int | None = None
        #: The framing error met, if any (the stream cannot be trusted after it).
        self.error: FrameError | None = None

    @property
    def pending(self) -> int:
        """Bytes received that do not yet form a complete frame."""
        header = 0 if self._expected is None else HEADER_SIZE
        return header + len(self._buffer)

    @property
    def in_frame(self) -> bool:
        """True while part of a frame has arrived but not all of it (a complete header
        with no body yet included)."""
        return self._expected is not None or bool(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data``; return every frame it completes, in order.

        When a header breaks the rules (:class:`FrameTooLarge`, :class:`EmptyFrame`) the
        decoder keeps the error in :attr:`error` and is unusable from then on: the frames
        completed before the bad header are still returned, and the error is raised by this
        call if there are none, or by the next call.
        """
        if self.error is not None:
            raise self.error
        if not self._buffer and self._expected is None and len(data) > HEADER_SIZE:
            # The usual case: nothing pending and the data is exactly one whole frame.
            (length,) = HEADER.unpack_from(data)
            if length + HEADER_SIZE == len(data) and length <= self.max_frame:
                return [data[HEADER_SIZE:]]
        self._buffer += data
        frames: list[bytes] = []
        while True:
            try:
                frame = self.next_frame()
            except FrameError:
                if frames:
                    return frames
                raise
            if frame is None:
                return frames
            frames.append(frame)

    def append(self, data: bytes) -> None:
        """Add ``data`` without decoding it; take frames one by one with :meth:`next_frame`.

        For a reader that must stop between two frames (e.g. when the bytes that follow
        belong to another layer, see :meth:`take_pending`).
        """
        if self.error is not None:
            raise self.error
        self._buffer += data

    def next_frame(self) -> bytes | None:
        """Decode one frame from the bytes added so far; None until one is complete.

        A header that breaks the rules raises :class:`FrameError` as soon as it has
        arrived (before its body), and the decoder is unusable from then on.
        """
        if self.error is not None:
            raise self.error
        buffer = self._buffer
        if self._expected is None:
            if len(buffer) < HEADER_SIZE:
                return None
            (length,) = HEADER.unpack_from(buffer)
            if length == 0:
                self.error = EmptyFrame()
            elif length > self.max_frame:
                self.error = FrameTooLarge(length, self.max_frame)
            if self.error is not None:
                raise self.error
            self._expected = length
            del buffer[:HEADER_SIZE]
        if len(buffer) < self._expected:
            return None
        frame = bytes(buffer[: self._expected])
        del buffer[: self._expected]
        self._expected = None
        return frame

    def take_pending(self) -> bytes:
        """Remove and return the bytes not yet decoded, exactly as received."""
        header = b"" if self._expected is None else HEADER.pack(self._expected)
        pending = header + bytes(self._buffer)
        self._buffer = bytearray()
        self._expected = None
        return pending
