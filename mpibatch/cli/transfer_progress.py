"""The terminal progress bar for uploads and downloads (`submit` inputs, `collect`, `outputs get`):
bytes, files done / total, rate and time left, drawn by tqdm on stderr. Only on a terminal and never
with ``--output json``, so logs, pipes and machine-read output carry none of it."""
from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

import click
from tqdm import tqdm

# bytes (SI units, like the rate) done/total, then time spent<time left, rate, files done/total
BAR = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}B/{total_fmt}B [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
_active: list[TerminalTransfers] = []  # the bar being drawn, so that status lines go above it


class TerminalTransfers:
    """A `mpibatch.transfers.Transfers` drawn as one tqdm bar, from the first files planned until the
    last of them is done (nothing to move, no bar); safe to call from several threads."""

    def __init__(self, what: str, stream: IO[str]) -> None:
        self._what, self._stream = what, stream
        self._lock = threading.Lock()
        self._files = 0
        self._done = 0
        self._bar: tqdm | None = None

    def _show_files(self, bar: tqdm) -> None:
        bar.set_postfix_str(f"{self._done}/{self._files} files", refresh=False)

    def planned(self, files: int, nbytes: int) -> None:
        if files <= 0:
            return
        with self._lock:
            self._files += files
            if self._bar is None:
                self._bar = tqdm(total=nbytes, desc=self._what, unit="B", unit_scale=True, bar_format=BAR,
                                 file=self._stream, dynamic_ncols=True, mininterval=0.2, delay=0,
                                 postfix=f"{self._done}/{self._files} files")
            else:
                self._bar.total += nbytes
                self._show_files(self._bar)
                self._bar.refresh()

    def moved(self, nbytes: int) -> None:
        with self._lock:
            if self._bar is not None:
                self._bar.update(nbytes)

    def file_done(self) -> None:
        with self._lock:
            self._done += 1
            if self._bar is None:
                return
            self._show_files(self._bar)
            if self._done >= self._files:  # all there: the final line stays, status lines go below it
                self._close()
            else:
                self._bar.update(0)  # redrawn at most every `mininterval`, however many small files

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._bar, self._files, self._done = None, 0, 0

    def close(self) -> None:
        with self._lock:
            self._close()


def wanted(output: str, stream: IO[str] | None = None) -> bool:
    """A bar only for people: a terminal on stderr and text output."""
    stream = sys.stderr if stream is None else stream
    return output != "json" and stream.isatty()


@contextmanager
def transfer_progress(what: str, output: str) -> Iterator[TerminalTransfers | None]:
    """The bar for one command's transfers, or None when it must not be shown; closed on the way out."""
    if not wanted(output):
        yield None
        return
    bar = TerminalTransfers(what, sys.stderr)
    _active.append(bar)
    try:
        yield bar
    finally:
        _active.remove(bar)
        bar.close()


def say(line: str) -> None:
    """A status line on stderr; above the bar while one is drawn, so neither overwrites the other."""
    if _active:
        tqdm.write(line, file=sys.stderr)
    else:
        click.echo(line, err=True)
