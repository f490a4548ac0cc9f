"""What the request/response services share: the sans-I/O connection core
(:mod:`common.rpc.connection`) and its thin Twisted adapter (:mod:`common.rpc.protocol`),
generic over a protocol's codec and its error classes (the intermediary's, sixid's)."""
