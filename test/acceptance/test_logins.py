"""Concurrent password logins against ``twistd -n irp`` with the shipped Argon2 parameters
(issue 9, item 1: two simultaneous logins used to freeze password hashing for good)."""

from __future__ import annotations

import subprocess
import time

from twisted.trial.unittest import SynchronousTestCase

from test.acceptance.processes import Deployment, Result

#: Password logins started at once, per user: two users (fewer than the 5 attempts a user
#: may have in flight, beyond which the registry answers rate-limited by design), and a
#: user who does not exist (a failed login costs the same hash).
LOGINS_PER_USER = 4
UNKNOWN_LOGINS = 2
#: Seconds all of them together may take (generous: a login costs one Argon2id hash).
BOUND = 120.0
#: Seconds the registry has to stop on SIGTERM afterwards.
STOP_BOUND = 15.0


class ConcurrentLoginTests(SynchronousTestCase):
    """Ten ``irp whoami --password-file`` processes at once, shipped defaults."""

    def test_concurrent_password_logins(self) -> None:
        """Every login finishes with the right answer within the bound; afterwards a login
        and a user creation (both hash a password) still work, and the registry stops on
        SIGTERM."""
        deployment = Deployment(self)
        registry = deployment.start_registry()
        admin = deployment.init(registry, "admin-profile", "admin")
        carol = deployment.secret("carol-password", "carol-password-1")
        deployment.create_user(registry, admin, "carol", carol)
        wrong = deployment.secret("wrong-password", "not-the-password")
        logins = {
            "admin@example.org (password": ("--profile", admin, "whoami", "--password-file", registry.admin_password_file),
            "carol@example.org (password": ("--profile", admin, "whoami", "--user", "carol", "--password-file", carol),
        }
        unknown = ("--profile", admin, "whoami", "--user", "nobody", "--password-file", wrong)

        started: list[tuple[str | None, tuple[subprocess.Popen[bytes], float]]] = [(answer, deployment.start("irp", *args)) for answer, args in logins.items() for _ in range(LOGINS_PER_USER)]
        started += [(None, deployment.start("irp", *unknown)) for _ in range(UNKNOWN_LOGINS)]
        deadline = time.monotonic() + BOUND
        results = [(answer, deployment.finish(process, begun, deadline)) for answer, (process, begun) in started]

        def went_wrong(answer: str | None, result: Result) -> bool:
            if result.killed or "Traceback" in result.out + result.err:
                return True
            if answer is None:  # a user who does not exist
                return result.code == 0 or "[login-failed]" not in result.err
            return result.code != 0 or not result.out.startswith(answer)

        problems = [result for answer, result in results if went_wrong(answer, result)]
        if problems:
            deployment.fail(
                f"{len(problems)} of {len(results)} concurrent password logins went wrong (bound {BOUND:.0f} s;"
                " each must answer 'USER@example.org (password...)', or 'login-failed' for a user who does not exist):\n"
                + "\n".join(result.describe() for result in problems)
            )

        # Hashing still works: a login, and a user created with a password.
        for answer, args in logins.items():
            after = deployment.irp(*args)
            self.assertTrue(after.out.startswith(answer), after.describe())
        dave = deployment.secret("dave-password", "dave-password-1")
        deployment.create_user(registry, admin, "dave", dave)
        after = deployment.irp("--profile", admin, "whoami", "--user", "dave", "--password-file", dave)
        self.assertTrue(after.out.startswith("dave@example.org (password"), after.describe())
        if not registry.service.stop(STOP_BOUND):
            deployment.fail(f"the registry did not stop within {STOP_BOUND:.0f} s of SIGTERM (it was killed)")
