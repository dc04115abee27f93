"""The emulator as one object: its account and key, state, storage, scheduler and HTTP server."""
from __future__ import annotations

import base64
import logging
import os
import re
import secrets
import shutil
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from ..durations import iso_seconds
from ..errors import SpecError
from . import apppackages, pools, spot, tasks
from .apppackages import Package
from .edge import BoundedServer
from .files import AutoStorage
from .nodes import Ledger, Processes
from .scheduler import Scheduler
from .schedules import Clock
from .server import make_server
from .state import Store
from .storage import HOW_TO_GET, Azurite, find_azurite
from .ticker import Ticker

log = logging.getLogger(__name__)
DEFAULT_VM_SIZE = "standard_d2s_v3"
STORAGE_ENV = "AZURE_STORAGE_CONNECTION_STRING"


def node_image(env: dict[str, str] | None = None) -> dict[str, str]:
    """What a node's processes start from: this environment without Azure credentials or mpibatch's
    own settings (a real node has neither)."""
    base = dict(os.environ if env is None else env)
    return {k: v for k, v in base.items() if not k.startswith(("AZURE_", "MPIBATCH_"))}


def seconds(iso: str | None) -> float | None:
    """ISO 8601 duration -> seconds; None for none or the service's "forever"."""
    if not iso or iso.startswith("P10675199D"):
        return None
    return iso_seconds(iso)


class Emulator:
    """`mpibatch emulate` in-process: `start()`, then point a Batch client at `endpoint` with `account`
    and `key`; `stop()` ends every node process (and the Azurite it started)."""

    def __init__(self, *, port: int = 8900, state_dir: str | Path | None = None, storage: str | None = "auto",
                 pools_: Sequence[tuple[str, int, int]] = (), account: str | None = None, key: str | None = None,
                 image: dict[str, str] | None = None, on_event: Callable[[str], None] | None = None,
                 storage_port: int | None = None, applications: Sequence[Package] = ()) -> None:
        self.port = port
        self.applications = apppackages.catalogue(list(applications))
        self.state_dir = Path(state_dir).resolve() if state_dir else None
        self.storage_arg = storage
        self.storage_port = storage_port
        self.initial_pools = list(pools_)
        self.account_arg, self.key_arg = account, key
        self.image = node_image(image)
        self.on_event = on_event or (lambda msg: log.info("%s", msg))
        self.store = Store(self.state_dir)
        self.procs = Processes(Ledger(self.state_dir / "processes.txt" if self.state_dir else None))
        self.scheduler = Scheduler(self)
        self.clock = Clock(self)  # job schedules
        self.ticker = Ticker(self)  # autoscale evaluations, mount syncs
        self.storage: AutoStorage | None = None
        self.connection_string: str | None = None
        self.azurite: Azurite | None = None
        self.restarted_failed: list[str] = []
        self._server: BoundedServer | None = None
        self._thread: threading.Thread | None = None
        self._tmp: Path | None = None
        self.account = account or ""
        self.key = key or ""
        self.seconds = seconds
        # Hooks around every authenticated request: before(method, path, body) may raise a BatchError
        # (tests inject throttling this way); after(method, path, status, body) sees every answer.
        self.before_request: Callable[[str, str, bytes], None] | None = None
        self.after_request: Callable[[str, str, int, bytes], None] | None = None

    @property
    def work_dir(self) -> Path:
        return (self.state_dir / "work") if self.state_dir else self._tmp  # type: ignore[return-value]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def event(self, message: str) -> None:
        self.on_event(message)

    def env(self) -> dict[str, str]:
        out = {"AZURE_BATCH_ENDPOINT": self.endpoint, "AZURE_BATCH_ACCOUNT": self.account,
               "AZURE_BATCH_ACCESS_KEY": self.key}
        if self.azurite is not None:  # Azurite's well-known development key; a user's own key is never printed
            out[STORAGE_ENV] = self.connection_string or ""
        return out

    def _identity(self) -> None:
        """Account and key: given, or generated once per state directory (and kept there)."""
        meta = self.store.meta
        account = self.account_arg or meta.get("account") or "emulator"
        key = self.key_arg or meta.get("key") or base64.b64encode(secrets.token_bytes(64)).decode()
        self.account, self.key = account, key
        meta.update({"account": account, "key": key})

    def check(self) -> None:
        """Bad input, before anything is created."""
        if self.key_arg:
            try:
                base64.b64decode(self.key_arg, validate=True)
            except ValueError:
                raise SpecError("--key", "is not base64", "use a base64 key, e.g. the output of "
                                "`openssl rand -base64 64`") from None
        if self.account_arg is not None and not re.fullmatch(r"[a-z0-9]{3,24}", self.account_arg):
            raise SpecError("--account", f"{self.account_arg!r} is not a Batch account name",
                            "use 3 to 24 lower-case letters and digits")
        if self.storage_arg == "auto" and find_azurite() is None:
            raise SpecError("--storage", "auto needs Azurite, and no azurite-blob was found", HOW_TO_GET)
        if self.storage_port is not None and self.storage_arg != "auto":
            raise SpecError("--storage-port", "chooses the port of the Azurite that --storage auto starts",
                            "drop --storage-port, or use --storage auto")
        if self.storage_arg not in (None, "", "none", "auto"):
            try:
                AutoStorage.parse(self.given_connection_string())
            except ValueError as e:
                raise SpecError("--storage", str(e), "pass `auto`, `none`, `env` or a full connection string") from None

    def given_connection_string(self) -> str:
        """The connection string of `--storage CONNECTION_STRING`, or of `--storage env`: the environment's
        AZURE_STORAGE_CONNECTION_STRING (so it never shows in `ps`)."""
        if self.storage_arg != "env":
            return self.storage_arg or ""
        value = os.environ.get(STORAGE_ENV, "")
        if not value:
            raise SpecError("--storage", f"env: {STORAGE_ENV} is not set",
                            f"export {STORAGE_ENV}='DefaultEndpointsProtocol=...' first")
        return value

    def start(self) -> Emulator:
        self.check()
        if self.state_dir:
            try:
                self.state_dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise SpecError("--state-dir", f"{self.state_dir}: cannot be used as a directory ({e.strerror})",
                                "give a directory (it is created when missing)") from None
            self.restarted_failed = self.store.load()
            tasks.resume_numbering(self.store.tasks.values())
            left = self.procs.ledger.end_leftovers()  # what a killed run left: ended before it is reported
            if left:
                self.event(f"ended {left} process group(s) a previous run of this state dir left behind")
        else:
            self._tmp = Path(tempfile.mkdtemp(prefix="mpibatch-emulate-"))
        self._identity()
        try:
            server = self._server = make_server(self, self.port)
        except OSError as e:
            raise SpecError("--port", f"cannot listen on 127.0.0.1:{self.port}: {e.strerror}",
                            "choose another port (0 picks a free one)") from None
        self.port = server.server_address[1]
        self.store.meta["port"] = self.port  # `mpibatch emulate preempt --state-dir` finds it here
        try:
            self._start_storage()
        except BaseException:
            server.server_close()
            self._server = None  # never served: stop() must not wait for its loop
            raise
        self.store.start_saving()
        self.scheduler.start()
        self.clock.start()
        self.ticker.start()
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="emulator-http", daemon=True)
        self._thread.start()
        spot.replace_preempted(self)
        for pool in [p for p in self.store.pools.values() if p["state"] == "deleting"]:
            pools.delete(self, pool["id"], again=True)  # a deletion the last run did not finish
        for task in self.restarted_failed:
            self.event(f"task {task}: failed (the emulator restarted while it ran)")
        for pool_id, nodes, slots in self.initial_pools:
            if pool_id.lower() not in self.store.pools:
                pools.add(self, {"id": pool_id, "vmSize": DEFAULT_VM_SIZE, "targetDedicatedNodes": nodes,
                                 "taskSlotsPerNode": slots, "enableInterNodeCommunication": True})
        return self

    def _start_storage(self) -> None:
        if self.storage_arg in (None, "", "none"):
            return
        if self.storage_arg == "auto":
            # the port: chosen, else the one this state dir's Azurite had (clients keep their connection string)
            port = self.storage_port if self.storage_port is not None else self.store.meta.get("azurite_port", 0)
            self.azurite = Azurite(self.work_dir / "azurite", port, self.procs.ledger.add).start()
            self.connection_string = self.azurite.connection_string
            self.store.meta["azurite_port"] = self.azurite.port
            self.event(f"storage: Azurite on 127.0.0.1:{self.azurite.port} (auto-storage of {self.account})")
        else:
            self.connection_string = self.given_connection_string()
        try:
            self.storage = AutoStorage.parse(self.connection_string or "")
        except ValueError as e:
            raise SpecError("--storage", str(e), "pass `auto` or a full connection string") from None

    def stop(self) -> None:
        self.clock.stop()
        self.ticker.stop()
        self.scheduler.stop()
        if self._server is not None:
            self._server.closing.set()  # an accept loop waiting for a free request slot gives up
            if self._thread is not None:  # shutdown() waits for serve_forever, so only once it runs
                self._server.shutdown()
                self._thread = None
            self._server.server_close()
            self._server = None
        self.store.stop_saving()
        if self.azurite is not None:
            self.azurite.stop()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
