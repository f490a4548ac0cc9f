"""The shared base of the protocols' errors and the one lookup of a received error."""

from __future__ import annotations

from twisted.trial import unittest

from common.errors import ProtocolError, error_class_for, subclasses_of
from irp import errors as irp_errors
from sixchat import errors as sixchat_errors


class _Base(ProtocolError):
    code = 500
    name = "internal-error"


class _Internal(_Base):
    pass


class _Refused(_Base):
    code = 401
    name = "refused"


class _RefusedWithReason(_Refused):
    def __init__(self, reason: str, message: str | None = None) -> None:
        self.reason = reason
        super().__init__(message)


class _Other(_Base):
    code = 404
    name = "other"


class ErrorClassForTests(unittest.TestCase):
    """error_class_for and subclasses_of."""

    def test_subclasses_depth_first(self) -> None:
        """Subclasses come depth first, in definition order."""
        self.assertEqual(subclasses_of(_Base), [_Internal, _Refused, _RefusedWithReason, _Other])

    def test_name_most_general_subclass(self) -> None:
        """A shared name gives the most general subclass; the base only if no subclass has it."""
        self.assertIs(error_class_for(_Base, "refused", 0), _Refused)
        self.assertIs(error_class_for(_Base, "internal-error", 500), _Internal)

    def test_code_then_base(self) -> None:
        """An unknown name falls back to the code (the base first), then to the base."""
        self.assertIs(error_class_for(_Base, "nope", 404), _Other)
        self.assertIs(error_class_for(_Base, "nope", 401), _Refused)
        self.assertIs(error_class_for(_Base, "nope", 500), _Base)
        self.assertIs(error_class_for(_Base, "nope", 0), _Base)

    def test_protocols(self) -> None:
        """Both protocols use the one rule."""
        self.assertIs(irp_errors.error_class_for("conflict", 409), irp_errors.Conflict)
        self.assertIs(irp_errors.error_class_for("certificate-rejected", 401), irp_errors.CertificateRejected)
        self.assertIs(irp_errors.error_class_for("internal-error", 500), irp_errors.InternalError)
        self.assertIs(irp_errors.error_class_for("nope", 500), irp_errors.IRPError)
        self.assertIs(sixchat_errors.error_class_for("internal-error", 500), sixchat_errors.InternalError)
        self.assertIs(sixchat_errors.error_class_for("nope", 0), sixchat_errors.SixChatError)

    def test_message(self) -> None:
        """A protocol error reads as its message, name and code."""
        self.assertEqual(str(_Refused("no")), "no [refused, 401]")
        self.assertEqual(_Refused().message, ProtocolError.default_message)
