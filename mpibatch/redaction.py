"""Keep credentials out of every message, log line and table: the one place that knows what to hide.

Pure functions, no I/O. What counts as a credential:

* the password of a URL's userinfo (``https://user:password@host/...``);
* every value of a URL's query string: a SAS token is a query string, and its ``sig`` is a signature
  made with the account key (https://learn.microsoft.com/azure/storage/common/storage-sas-overview);
* SAS parameters quoted without their URL (``http.client.InvalidURL`` quotes the path and query only);
* any secret the caller names (an account key, a connection string).

Use :func:`redact_url` for a URL mpibatch prints, and :func:`redact` for any text that may hold one,
including the message of an exception that mpibatch did not raise.
"""
from __future__ import annotations

import re

MASK = "<redacted>"

# A URL inside free text: scheme://, then anything up to whitespace or a quote/bracket (not the
# punctuation that ends a sentence).
_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>()\[\]{}]*[^\s'\"<>()\[\]{},;.]")
# userinfo right after the scheme: user:password@ (unencoded, a password holds no "/", "?", "#" or "@").
_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^/?#@:]*):(?P<password>[^/?#@]*)@")
# SAS parameters (and their user delegation key fields) anywhere in text, URL or not.
_SAS_PARAM = re.compile(r"(?<![A-Za-z0-9_])(sig|se|st|skoid|sktid|skt|ske|sks|skv|sdd|saoid|suoid)"
                        r"=(?!<redacted>)[^&\s'\",;]*", re.IGNORECASE)


def redact_url(url: str) -> str:
    """`url` with the password of its userinfo and every query value masked; never raises, whatever
    the URL looks like (spaces, bad ports and brackets included)."""
    text = str(url)
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text, count=1)
    base, sep, rest = text.partition("?")
    if not sep:
        return text
    query, hash_sep, fragment = rest.partition("#")
    masked = "&".join(f"{p.partition('=')[0]}={MASK}" if "=" in p else (MASK if p else p) for p in query.split("&"))
    return f"{base}?{masked}{hash_sep}{MASK if fragment else ''}"


def redact(text: object, *secrets: str | None) -> str:
    """`text` with every URL redacted (:func:`redact_url`), stray SAS parameters masked and the given
    secrets replaced."""
    out = str(text)
    for s in secrets:  # first: a secret may be a whole connection string holding URLs
        if s:
            out = out.replace(s, MASK)
    out = _URL.sub(lambda m: redact_url(m.group(0)), out)
    return _SAS_PARAM.sub(lambda m: f"{m.group(1)}={MASK}", out)


__all__ = ["MASK", "redact", "redact_url"]
