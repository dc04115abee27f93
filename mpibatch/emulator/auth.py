"""Shared Key authentication of Batch REST requests (learn.microsoft.com/rest/api/batchservice/
authenticate-requests-to-the-azure-batch-service): HMAC-SHA256 over the verb, the standard headers, the
`ocp-*` headers, `/account/path` and the sorted query parameters, with the base64 account key."""
from __future__ import annotations

import base64
import hashlib
import hmac
import re
import urllib.parse
from collections.abc import Mapping
from email.message import Message

from .errors import BatchError

HEADERS_TO_SIGN = ("content-encoding", "content-language", "content-length", "content-md5", "content-type",
                   "date", "if-modified-since", "if-match", "if-none-match", "if-unmodified-since", "range")


def string_to_sign(method: str, raw_path: str, query: str, headers: Mapping[str, str] | Message,
                   account: str) -> str:
    h = {k.lower(): v for k, v in headers.items() if v}
    if method not in ("GET", "HEAD") and "content-length" not in h:
        h["content-length"] = "0"
    out = method + "\n" + "\n".join(h.get(x, "") for x in HEADERS_TO_SIGN) + "\n"
    out += "".join(f"{k}:{v}\n" for k, v in sorted((k, v) for k, v in h.items() if k.startswith("ocp-")))
    out += f"/{account}{raw_path}"
    params = urllib.parse.parse_qs(query, keep_blank_values=True)
    for name in sorted(params, key=str.lower):
        if params[name][0]:
            out += f"\n{name.lower()}:{params[name][0]}"
    return out


def sign(key: str, text: str) -> str:
    return base64.b64encode(hmac.new(base64.b64decode(key), text.encode(), hashlib.sha256).digest()).decode()


def check(method: str, raw_path: str, query: str, headers: Mapping[str, str] | Message, account: str,
          key: str) -> None:
    """Raise the service's error for a missing, malformed or wrong signature."""
    auth = headers.get("Authorization") or ""
    if not auth:
        raise BatchError(401, "AuthenticationFailed", "Server failed to authenticate the request. The "
                         "Authorization header is missing.")
    m = re.fullmatch(r"SharedKey ([^:\s]+):(\S+)", auth)
    if not m:
        raise BatchError(401, "InvalidAuthenticationInfo", "The authentication information was not provided in the "
                         "correct format (mpibatch emulate takes Shared Key only, not Microsoft Entra tokens).")
    who, signature = m.groups()
    expected = sign(key, string_to_sign(method, raw_path, query, headers, who))
    if who != account or not hmac.compare_digest(signature, expected):
        raise BatchError(403, "AuthenticationFailed", "Server failed to authenticate the request. Make sure the "
                         "value of Authorization header is formed correctly including the signature.",
                         {"AuthenticationErrorDetail": "The MAC signature found in the HTTP request is not the same "
                          "as any computed signature."})
