"""Where a rendered multi-instance task runs: one interface for every executor, and a registry by name.

An executor takes the task exactly as Batch would receive it (a `Rendered`) and returns a `TaskHandle`,
the same type from every executor (in the spirit of submitit's `Job`): `.state`, `.wait()`, `.collect()`,
`.result()`, `.stdout()`, `.stderr()`. Rehearsal executors (local, ssh) run the task to its end before
they return, so their handles are already complete; the Azure executor returns as soon as Batch holds
the task.

    from mpibatch import load_spec
    from mpibatch.executors import get_executor

    handle = get_executor("local", runs_dir="runs").submit(load_spec("spec.yaml"))
    print(handle.result().exit_code, handle.stdout())

A new executor is one module: subclass `Executor` (or `RehearsalExecutor` for a new `Transport`), then
`register("name", "package.module:Class")` or declare it under the `mpibatch.executors` entry-point group.
"""
from __future__ import annotations

import abc
import importlib
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import SpecError

if TYPE_CHECKING:
    from ..render import Rendered
    from ..results import TaskResult
    from ..spec import Spec

Progress = Callable[[str, str], None]  # (phase, detail): what every executor reports while it works
ENTRY_POINT_GROUP = "mpibatch.executors"

# Built-in executors by import path, so that `mpibatch run` never imports the Azure SDK.
_BUILTIN: dict[str, str] = {
    "local": "mpibatch.executors.local:LocalExecutor",
    "ssh": "mpibatch.executors.ssh:SshExecutor",
    "azure": "mpibatch.executors.azure:AzureExecutor",
}
_registry: dict[str, str | Callable[..., Executor]] = dict(_BUILTIN)


class TaskHandle:
    """A submitted task. Every executor returns this type; what it can do is the executor's."""

    def __init__(self, executor: Executor, job_id: str, task_id: str, result: TaskResult | None = None) -> None:
        """`result`: the collected result of a task that has already ended (rehearsal executors)."""
        self.executor, self.job_id, self.task_id = executor, job_id, task_id
        self._last: TaskResult | None = result  # the latest state seen
        self._collected: TaskResult | None = result  # outputs brought back

    def __repr__(self) -> str:
        return f"TaskHandle({self.executor.name}:{self.job_id}/{self.task_id})"

    @property
    def done(self) -> bool:
        """The task has ended (its outputs may still be to collect)."""
        return self._last is not None and self._last.state in ("completed", "failed")

    @property
    def state(self) -> str:
        """active | running | completed | failed."""
        return self.status().state

    def status(self) -> TaskResult:
        """State, exit code and instances, without downloading outputs."""
        if self._collected is not None:
            return self._collected
        if self._last is None or not self.done:
            self._last = self.executor.status(self.job_id, self.task_id)
        return self._last

    def wait(self, timeout: float | None = None) -> TaskResult:
        """Block until the task has ended (outputs not yet brought back)."""
        if self._collected is not None:
            return self._collected
        if self._last is None or not self.done:
            self._last = self.executor.wait(self.job_id, self.task_id, timeout=timeout)
        return self._last

    def collect(self, to: str | Path | None = None) -> TaskResult:
        """Bring back the outputs and logs of every instance, once; the result says where they are."""
        if self._collected is None:
            self._collected = self._last = self.executor.collect(self.job_id, self.task_id, to=to)
        return self._collected

    def result(self, timeout: float | None = None) -> TaskResult:
        """Wait for the task, collect its outputs, and return the result."""
        self.wait(timeout=timeout)
        return self.collect()

    def stdout(self, instance: int = 0) -> str:
        return self._log(instance, "stdout")

    def stderr(self, instance: int = 0) -> str:
        return self._log(instance, "stderr")

    def _log(self, instance: int, stream: str) -> str:
        r = self.result()
        try:
            inst = next(i for i in r.instances if i.index == instance)
        except StopIteration:
            raise SpecError("instance", f"task {self.job_id}/{self.task_id} has no instance {instance}",
                            f"use 0..{len(r.instances) - 1}") from None
        path = getattr(inst, f"{stream}_path")
        if path:
            try:
                return Path(path).read_text(errors="replace")
            except OSError:
                pass
        return str(getattr(inst, stream))


class Executor(abc.ABC):
    """Runs rendered multi-instance tasks somewhere. Subclasses set `name` and implement `submit`;
    executors that keep tasks after submitting (a Batch account) also implement `status`, `wait` and
    `collect`, which `TaskHandle` calls."""

    name: ClassVar[str] = ""

    @abc.abstractmethod
    def submit(self, task: Rendered | Spec) -> TaskHandle:
        """Start the task; rehearsal executors return once it has ended and been collected."""

    def attach(self, job_id: str, task_id: str) -> TaskHandle:
        """A handle on a task submitted earlier (by this process or another one)."""
        return TaskHandle(self, job_id, task_id)

    def status(self, job_id: str, task_id: str) -> TaskResult:
        raise self._unsupported("status")

    def wait(self, job_id: str, task_id: str, *, timeout: float | None = None) -> TaskResult:
        raise self._unsupported("wait")

    def collect(self, job_id: str, task_id: str, *, to: str | Path | None = None) -> TaskResult:
        raise self._unsupported("collect")

    def _unsupported(self, what: str) -> SpecError:
        return SpecError("--executor", f"the {self.name} executor cannot {what} a task it did not just run",
                         "use the handle that submit returned")


def rendered(task: Rendered | Spec) -> Rendered:
    """A spec rendered, or a rendering as it is."""
    from ..render import Rendered, render

    return task if isinstance(task, Rendered) else render(task)


# ------------------------------------------------------------------------------------------ registry
def register(name: str, factory: str | Callable[..., Executor]) -> None:
    """Make an executor available by name: a class (or factory) or a "module:attribute" path."""
    _registry[name] = factory


def _plugins() -> dict[str, Any]:
    from importlib.metadata import entry_points  # scans every installed package: only when a name needs it

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name not in _registry}


def names() -> list[str]:
    """Every executor name: the built-ins, those registered, those of installed plugins."""
    return [*_registry, *_plugins()]


def executor_class(name: str) -> Callable[..., Executor]:
    factory: Any = _registry.get(name)
    if factory is None:
        plugin = _plugins().get(name)
        if plugin is None:
            raise SpecError("--executor", f"unknown executor {name!r}", f"choose one of: {', '.join(names())}")
        factory = plugin.load()
    if isinstance(factory, str):
        module, _, attr = factory.partition(":")
        factory = getattr(importlib.import_module(module), attr)
    return factory


def get_executor(name: str, **options: Any) -> Executor:
    """The executor `name`, built with `options`; an option it does not take is bad input (the
    message names it as the command-line flag it came from)."""
    factory = executor_class(name)
    params = inspect.signature(factory).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = sorted(k for k in options if k not in params and not takes_any)
    if unknown:
        flags = ", ".join("--" + k.replace("_", "-") for k in unknown)
        raise SpecError(flags, f"does not apply to the {name} executor", "drop it, or choose another --executor")
    return factory(**options)


__all__ = ["ENTRY_POINT_GROUP", "Executor", "Progress", "TaskHandle", "executor_class", "get_executor", "names",
           "register", "rendered"]
