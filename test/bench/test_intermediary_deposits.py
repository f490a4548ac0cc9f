"""Figure 12's load sends every deposit with an envelope never sent before (the intermediary
answers a repeated deposit from the stored copy without writing, which would flatter it)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from bench.intermediary_deposits import FreshDeposits, deposit_frames
from intermediary.wire import Deposit, parse_request


class FreshDepositsTests(SynchronousTestCase):
    def test_every_request_carries_a_new_valid_envelope(self) -> None:
        frames = FreshDeposits([frame for index in range(3) for frame in deposit_frames(index, 3, 1)])
        seen: set[bytes] = set()
        for index in range(300):  # a hundred rounds of the three templates
            operation = parse_request(frames[index][4:]).operation
            assert isinstance(operation, Deposit)
            self.assertEqual(len(operation.envelope), 1024)
            self.assertEqual(str(operation.to).split("@")[0], parse_request(frames[index % 3][4:]).operation.to.username)  # type: ignore[union-attr]
            seen.add(operation.envelope)
        self.assertEqual(len(seen), 300)
