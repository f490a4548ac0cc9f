"""The IANA-registered TCP ports of the protocols in this distribution (one place, so the
shared layer needs none of the protocol packages to know them)."""

#: IRP, the Identity Registration Protocol.
IRP_PORT = 4604
#: SixChat End2End Direct.
SIXCHAT_PORT = 4605
#: SixID.
SIXID_PORT = 4606
