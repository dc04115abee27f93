"""The seam through which long transfers report how far they are: the library calls a `Transfers`
observer, the CLI decides whether and how to show it (mpibatch/cli/transfer_progress.py). The library
never prints; without an observer nothing is reported."""
from __future__ import annotations

from typing import Protocol


class Transfers(Protocol):
    """Told about uploads and downloads as they happen; called from several threads at once."""

    def planned(self, files: int, nbytes: int) -> None:
        """`files` more files of `nbytes` bytes in all are to be moved (may be called more than once)."""

    def moved(self, nbytes: int) -> None:
        """`nbytes` more bytes were sent or received (or found already there and verified)."""

    def file_done(self) -> None:
        """One planned file is finished: moved, kept, or failed."""
