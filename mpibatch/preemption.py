"""``mpibatch run --preempt-at 30s[,75s]``: when a rehearsal evicts every node of its task, as Batch
evicts a Spot VM (docs/checkpoints.md#preemption), at those times or on demand. No I/O."""
from __future__ import annotations

import threading

from .durations import parse_duration
from .errors import SpecError

MAX_PREEMPTIONS = 20
OPTION = "--preempt-at"


def parse_preempt_at(text: str | None) -> tuple[int, ...]:
    """Seconds after the run's start, strictly increasing: ``30s,75s`` -> (30, 75). Empty: none."""
    if not text:
        return ()
    times = tuple(parse_duration(w.strip(), OPTION) for w in text.split(","))
    if len(times) > MAX_PREEMPTIONS:
        raise SpecError(OPTION, f"{len(times)} preemptions", f"give at most {MAX_PREEMPTIONS}")
    if any(b <= a for a, b in zip(times, times[1:])):
        raise SpecError(OPTION, f"{text!r} is not in increasing order", "write the times in order, e.g. 30s,75s")
    return times


def due(times: tuple[int, ...], done: int, elapsed_s: float) -> bool:
    """True when preemption number `done` (0-based) of `times` is due after `elapsed_s` seconds."""
    return done < len(times) and elapsed_s >= times[done]


class Preemptions:
    """When a rehearsal evicts every node: at each of `times` (seconds after the run's start) and whenever
    `ask` is called (from any thread: `RehearsalExecutor.preempt`, as `mpibatch emulate preempt` for the
    emulator). The lifecycle calls `take` while the coordination step or the program runs, so a request made
    in between waits for the next attempt's coordination, as a time does."""

    def __init__(self, times: tuple[int, ...] = ()) -> None:
        self.times, self.done = times, 0
        self._asked = threading.Event()

    def ask(self) -> None:
        self._asked.set()

    def take(self, elapsed_s: float) -> bool:
        """True (once) when an eviction is due now."""
        if self._asked.is_set():
            self._asked.clear()
            return True
        if due(self.times, self.done, elapsed_s):
            self.done += 1
            return True
        return False
