"""What the protocols' error hierarchies share.

Each protocol (IRP, SixChat) has its own tree of wire errors, each class carrying a numeric
wire code, a stable wire name and a sentence a user can read. Their common base is
:class:`ProtocolError`; :func:`subclasses_of` lists a tree and :func:`error_class_for` finds
the class a received error (a name and a code) stands for. The PKI's errors
(:mod:`common.pki.errors`) are not protocol errors: they carry reasons, no wire codes.
"""

from __future__ import annotations

from typing import ClassVar, TypeVar

E = TypeVar("E", bound=Exception)
P = TypeVar("P", bound="ProtocolError")


class ProtocolError(Exception):
    """Base of every protocol's wire errors: a code, a name and a readable message.

    Code that only needs "the peer or the network said no" (such as a CRL fetcher's caller)
    catches this without knowing which protocol spoke.
    """

    code: ClassVar[int] = 500
    name: ClassVar[str] = "internal-error"
    default_message: ClassVar[str] = "The request failed."

    def __init__(self, message: str | None = None) -> None:
        self.message = message or self.default_message
        super().__init__(self.message)

    def __str__(self) -> str:
        return f"{self.message} [{self.name}, {self.code}]"


def subclasses_of(cls: type[E]) -> list[type[E]]:
    """Every subclass of ``cls``, depth first, in definition order."""
    found: list[type[E]] = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(subclasses_of(sub))
    return found


def error_class_for(base: type[P], name: str, code: int) -> type[P]:
    """The class of ``base``'s tree that a received error (wire name, code) stands for.

    By name first: the most general subclass carrying it (depth first, in definition
    order), so that it can be built from a message alone; the base itself only when no
    subclass carries the name. Then by code: the first class with it, the base first.
    Else the base.
    """
    subclasses = subclasses_of(base)
    for cls in (*subclasses, base):
        if cls.name == name:
            return cls
    for cls in (base, *subclasses):
        if cls.code == code:
            return cls
    return base
