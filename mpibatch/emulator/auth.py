"""Shared Key authentication of Batch REST requests (learn.microsoft.com/rest/api/batchservice/
authenticate-requests-to-the-azure-batch-service): HMAC-SHA256 over the verb, the standard headers, the
`ocp-*` headers, `/account/path` and the sorted query parameters, with the base64 account key. As the
service does, a request whose date (`ocp-date`, else `Date`) is missing or more than 15 minutes from this
machine's clock is refused: a captured request cannot be replayed later."""
from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
import urllib.parse
from collections.abc import Mapping
from datetime import timezone
from email.message import Message
from email.utils import parsedate_to_datetime

from .errors import BatchError

HEADERS_TO_SIGN = ("content-encoding", "content-language", "content-length", "content-md5", "content-type",
                   "date", "if-modified-since", "if-match", "if-none-match", "if-unmodified-since", "range")
MAX_CLOCK_SKEW_S = 15 * 60  # the service's window for a request's date


def string_to_sign(method: str, raw_path: str, query: str, headers: Mapping[str, str] | Message,
                   account: str, *, lower_names: bool = True) -> str:
    """The documented string (query names lower-cased); `lower_names=False`: names as sent, sorted as they
    are - what azure-batch 15.1's BatchSharedKeyAuthPolicy signs (its `timeOut` parameter)."""
    h = {k.lower(): v for k, v in headers.items() if v}
    if method not in ("GET", "HEAD") and "content-length" not in h:
        h["content-length"] = "0"
    out = method + "\n" + "\n".join(h.get(x, "") for x in HEADERS_TO_SIGN) + "\n"
    out += "".join(f"{k}:{v}\n" for k, v in sorted((k, v) for k, v in h.items() if k.startswith("ocp-")))
    out += f"/{account}{raw_path}"
    params = urllib.parse.parse_qs(query, keep_blank_values=True)
    for name in sorted(params, key=str.lower if lower_names else None):
        if params[name][0]:
            out += f"\n{name.lower() if lower_names else name}:{params[name][0]}"
    return out


def sign(key: str, text: str) -> str:
    return base64.b64encode(hmac.new(base64.b64decode(key), text.encode(), hashlib.sha256).digest()).decode()


def _refused(detail: str) -> BatchError:
    return BatchError(403, "AuthenticationFailed", "Server failed to authenticate the request. Make sure the "
                      "value of Authorization header is formed correctly including the signature.",
                      {"AuthenticationErrorDetail": detail})


def check_date(headers: Mapping[str, str] | Message, now: float) -> None:
    """The request's date must be within MAX_CLOCK_SKEW_S of `now` (seconds since the epoch)."""
    text = headers.get("ocp-date") or headers.get("Date") or ""
    if not text:
        raise _refused("Request date header not specified (ocp-date or Date).")
    try:
        parsed = parsedate_to_datetime(text)
        when = (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        raise _refused(f"The request date {text[:40]!r} is not an RFC 1123 date.") from None
    if abs(when - now) > MAX_CLOCK_SKEW_S:
        raise _refused(f"Request date header too {'old' if when < now else 'far in the future'}: {text[:40]} is "
                       f"more than {MAX_CLOCK_SKEW_S // 60} minutes from the emulator's clock.")


def check(method: str, raw_path: str, query: str, headers: Mapping[str, str] | Message, account: str,
          key: str, now: float | None = None) -> None:
    """Raise the service's error for a missing, malformed or wrong signature, or a date outside the window."""
    auth = headers.get("Authorization") or ""
    if not auth:
        raise BatchError(401, "AuthenticationFailed", "Server failed to authenticate the request. The "
                         "Authorization header is missing.")
    m = re.fullmatch(r"SharedKey ([^:\s]+):(\S+)", auth)
    if not m:
        raise BatchError(401, "InvalidAuthenticationInfo", "The authentication information was not provided in the "
                         "correct format (mpibatch emulate takes Shared Key only, not Microsoft Entra tokens).")
    who, signature = m.groups()
    # Both forms need the key; they differ only when a query name has capitals (15.1's `timeOut`).
    forms = {sign(key, string_to_sign(method, raw_path, query, headers, who, lower_names=lower))
             for lower in (True, False)}
    if who != account or not any(hmac.compare_digest(signature, f) for f in forms):
        raise _refused("The MAC signature found in the HTTP request is not the same as any computed signature.")
    check_date(headers, time.time() if now is None else now)
