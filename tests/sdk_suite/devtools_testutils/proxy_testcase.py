"""Where the tests' requests go. Azure's `transform_request` sends each request to its test proxy; this
one sends a request for a routed `https://host:port` base to the emulator's `http://` address (Batch
speaks only HTTPS, the emulator only HTTP on 127.0.0.1). The Shared Key signature covers the path and
query, not the scheme or host, so the request arrives signed as the client signed it."""
from __future__ import annotations

from typing import Any

UPSTREAM_HEADER = "x-recording-upstream-base-uri"
_routes: dict[str, str] = {}


def route(public_base: str, emulator_base: str) -> None:
    _routes[public_base.rstrip("/")] = emulator_base.rstrip("/")


def unroute(public_base: str) -> None:
    _routes.pop(public_base.rstrip("/"), None)


def _under(url: str, base: str) -> bool:
    return url == base or url.startswith((base + "/", base + "?"))


def transform_request(request: Any, recording_id: str) -> None:
    """Send a request for an account's public base to its emulator; one already for the emulator (a page's
    `odata.nextLink` is the emulator's own URL) goes there as it is."""
    for public, emulator in _routes.items():
        if _under(request.url, public) or _under(request.url, emulator):
            request.headers[UPSTREAM_HEADER] = public
            request.url = emulator + request.url[len(public if _under(request.url, public) else emulator):]
            return
    raise AssertionError(f"request to {request.url.split('?')[0]}: not an emulator's address; "
                         "the tests reach nothing else")


def get_test_id() -> str:
    return "live"


def start_record_or_playback(test_id: str) -> tuple[str, dict[str, Any]]:
    return "live", {}


def stop_record_or_playback(test_id: str, recording_id: str, test_variables: Any) -> None:
    return None


def recorded_by_proxy(test_func: Any) -> Any:
    """The sync decorator: test_batch.py imports it; its tests use the async one of decorators.py."""
    return test_func
