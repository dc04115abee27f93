"""Routes of the operations that live in modules of their own (supported images, job schedules), added to
server.py's table: (verb, path pattern, handler(query, body, *path ids))."""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import images, jobs, schedules

if TYPE_CHECKING:
    from .core import Emulator

ID = r"([^/]+)"


def table(e: Emulator) -> list[tuple[str, str, Callable[..., Any]]]:
    # server imports this module: its helpers are read when the table is built
    from .server import _accepted, _body, _created, _doing, _list, odata

    def url(s: str) -> str:
        return f"{e.endpoint}/jobschedules/{s}"

    def no_content(s: str) -> tuple[int, None, dict[str, str]]:
        return 204, None, {"DataServiceId": url(s)}

    return [
        ("GET", "/supportedimages", lambda q, b: _list(e, q, images.supported_images(), "/supportedimages")),
        ("GET", "/nodeagentskus", lambda q, b: _list(e, q, images.node_agent_skus(q["api-version"][0]),
                                                     "/nodeagentskus")),
        ("POST", "/jobschedules", lambda q, b: _created(schedules.add(e, _body(b))["url"])),
        ("GET", "/jobschedules", lambda q, b: _list(e, q, schedules.listing(e), "/jobschedules")),
        ("GET", f"/jobschedules/{ID}", lambda q, b, s: (200, odata.select_one(schedules.view(
            schedules.get(e, s)), q), {})),
        ("HEAD", f"/jobschedules/{ID}", lambda q, b, s: (200, schedules.get(e, s) and None, {})),
        ("PUT", f"/jobschedules/{ID}", lambda q, b, s: _doing(
            lambda: schedules.update(e, s, _body(b), replace=True), (200, None, {"DataServiceId": url(s)}))),
        ("PATCH", f"/jobschedules/{ID}", lambda q, b, s: _doing(
            lambda: schedules.update(e, s, _body(b), replace=False), (200, None, {"DataServiceId": url(s)}))),
        ("DELETE", f"/jobschedules/{ID}", lambda q, b, s: _doing(lambda: schedules.delete(e, s), _accepted(url(s)))),
        ("POST", f"/jobschedules/{ID}/terminate", lambda q, b, s: _doing(lambda: schedules.terminate(e, s),
                                                                          _accepted(url(s)))),
        ("POST", f"/jobschedules/{ID}/disable", lambda q, b, s: _doing(lambda: schedules.set_enabled(e, s, False),
                                                                        no_content(s))),
        ("POST", f"/jobschedules/{ID}/enable", lambda q, b, s: _doing(lambda: schedules.set_enabled(e, s, True),
                                                                       no_content(s))),
        ("GET", f"/jobschedules/{ID}/jobs", lambda q, b, s: _list(e, q, [jobs.view(j) for j in schedules.jobs_of(
            e, s)], f"/jobschedules/{s}/jobs")),
    ]
