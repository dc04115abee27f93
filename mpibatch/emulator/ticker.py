"""The emulator's clock for what happens on an interval: autoscale sampling and evaluation (poolops) and
the blob mounts' upload (mounts). One thread, started and stopped with the emulator."""
from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from . import mounts, nodeops, poolops

if TYPE_CHECKING:
    from .core import Emulator

log = logging.getLogger(__name__)
TICK_S = 1.0
MOUNT_SYNC_S = 5.0


class Ticker:
    def __init__(self, emu: Emulator) -> None:
        self.emu = emu
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        nodeops.recover(self.emu)
        self._thread = threading.Thread(target=self._loop, name="emulator-ticker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _loop(self) -> None:
        last_sync = time.monotonic()
        while not self._stop.wait(TICK_S):
            try:
                poolops.tick(self.emu)
                if time.monotonic() - last_sync >= MOUNT_SYNC_S:
                    last_sync = time.monotonic()
                    mounts.tick(self.emu)
            except Exception:  # noqa: BLE001 - a bug in one tick must not end the clock
                log.exception("ticker")
