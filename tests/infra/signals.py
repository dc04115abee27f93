"""Children that a test interrupts with SIGINT (Ctrl-C) start with SIGINT's default disposition.

A shell without job control starts background commands (`bash scripts/test.sh &`, nohup scripts, CI
runners) with SIGINT ignored, and an ignored signal stays ignored across exec: Python then installs no
KeyboardInterrupt handler and the command under test never sees the test's Ctrl-C. Every test that
sends SIGINT passes ``preexec_fn=default_sigint`` to the Popen of the process it interrupts."""
from __future__ import annotations

import signal


def default_sigint() -> None:
    """A Popen preexec_fn: SIGINT back to SIG_DFL in the child, whatever the test process inherited."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
