"""OData list options of the Batch REST API: `$filter` (comparisons on properties joined with and / or,
`startswith`), `$select` and `maxresults` with `odata.nextLink` paging. Pure.

A filter the emulator cannot read is refused (400 InvalidQueryParameterValue), never ignored: a list that
silently returned everything would pass a client's test for the wrong reason."""
from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable
from typing import Any

from .errors import BatchError

MAX_RESULTS = 1000  # the service's default and largest page
TOKEN = re.compile(r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<num>-?\d+(?:\.\d+)?)|(?P<word>[A-Za-z_][\w/]*)|(?P<p>[(),]))")
Pred = Callable[[dict[str, Any]], bool]


MAX_NESTING = 32  # parentheses inside parentheses: the parser recurses once per level
MAX_FILTER = 4096  # characters of one $filter


def _all(preds: list[Pred]) -> Pred:
    """One predicate for `a and b and ...`: flat, so a long chain never recurses when it is evaluated."""
    return preds[0] if len(preds) == 1 else (lambda item: all(p(item) for p in preds))


def _any(preds: list[Pred]) -> Pred:
    return preds[0] if len(preds) == 1 else (lambda item: any(p(item) for p in preds))


def bad_query(name: str, value: str, reason: str) -> BatchError:
    return BatchError(400, "InvalidQueryParameterValue", "Value for one of the query parameters specified in the "
                      "request URI is invalid.", {"QueryParameterName": name, "QueryParameterValue": value[:200],
                                                   "Reason": reason})


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(text.rstrip()):
        m = TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise bad_query("$filter", text, f"cannot read the filter at {text[pos:pos + 20]!r}")
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


def _value(item: dict[str, Any], path: str) -> Any:
    cur: Any = item
    for part in path.split("/"):
        cur = cur.get(part) if isinstance(cur, dict) else None
    return cur


def _norm(v: Any) -> Any:
    return v.lower() if isinstance(v, str) else v


OPS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": lambda a, b: _norm(a) == _norm(b), "ne": lambda a, b: _norm(a) != _norm(b),
    "gt": lambda a, b: a is not None and a > b, "ge": lambda a, b: a is not None and a >= b,
    "lt": lambda a, b: a is not None and a < b, "le": lambda a, b: a is not None and a <= b}


class _Parser:
    def __init__(self, text: str) -> None:
        if len(text) > MAX_FILTER:
            raise bad_query("$filter", text[:60], f"a filter has at most {MAX_FILTER} characters")
        self.text, self.toks, self.i = text, _tokens(text), 0
        self.nesting = 0

    def fail(self, why: str) -> BatchError:
        return bad_query("$filter", self.text, f"mpibatch emulate reads comparisons (eq ne gt ge lt le), and, or, "
                         f"startswith(property,'text') and parentheses: {why}")

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise self.fail("the filter ends too early")
        self.i += 1
        return tok

    def literal(self) -> Any:
        kind, text = self.take()
        if kind == "str":
            return text[1:-1].replace("''", "'")
        if kind == "num":
            return float(text) if "." in text else int(text)
        if kind == "word" and text in ("true", "false"):
            return text == "true"
        if kind == "word" and text == "null":
            return None
        if kind == "word" and text.startswith("datetime"):
            raise self.fail("datetime literals are not emulated")
        raise self.fail(f"expected a value, found {text!r}")

    def atom(self) -> Pred:
        kind, text = self.take()
        if text == "(":
            self.nesting += 1
            if self.nesting > MAX_NESTING:
                raise self.fail(f"parentheses nest more than {MAX_NESTING} deep")
            pred = self.expr()
            if self.take()[1] != ")":
                raise self.fail("missing ')'")
            self.nesting -= 1
            return pred
        if kind == "word" and text == "startswith":
            if self.take()[1] != "(":
                raise self.fail("startswith takes (property,'text')")
            prop = self.take()[1]
            self.take()
            prefix = str(self.literal()).lower()
            self.take()
            return lambda item: str(_value(item, prop) or "").lower().startswith(prefix)
        if kind != "word":
            raise self.fail(f"expected a property name, found {text!r}")
        op = self.take()[1]
        if op not in OPS:
            raise self.fail(f"unknown operator {op!r}")
        value, fn = self.literal(), OPS[op]
        return lambda item: fn(_value(item, text), value)

    def conj(self) -> Pred:
        preds = [self.atom()]
        while self.peek() == ("word", "and"):
            self.i += 1
            preds.append(self.atom())
        return _all(preds)

    def expr(self) -> Pred:
        preds = [self.conj()]
        while self.peek() == ("word", "or"):
            self.i += 1
            preds.append(self.conj())
        return _any(preds)


def parse_filter(text: str) -> Pred:
    p = _Parser(text)
    pred = p.expr()
    if p.peek() is not None:
        raise p.fail(f"unexpected {p.peek()[1]!r}")  # type: ignore[index]
    return pred


def check_expand(query: dict[str, list[str]]) -> None:
    """`$expand=stats` is answered by the views (versions.answer); Batch offers no other expansion."""
    value = (query.get("$expand") or [""])[0]
    if value and value.strip().lower() != "stats":
        raise bad_query("$expand", value, "the only expansion Batch offers is 'stats'")


def page(items: list[dict[str, Any]], query: dict[str, list[str]], base_url: str) -> dict[str, Any]:
    """One page of a list answer: filtered, selected, at most maxresults, with odata.nextLink."""
    def one(name: str) -> str | None:
        v = query.get(name)
        return v[0] if v else None

    check_expand(query)
    text = one("$filter")
    if text:
        pred = parse_filter(text)
        items = [i for i in items if pred(i)]
    raw_max = one("maxresults") or str(MAX_RESULTS)
    if not raw_max.isdigit() or not 1 <= int(raw_max) <= MAX_RESULTS:
        raise bad_query("maxresults", raw_max, f"a whole number from 1 to {MAX_RESULTS}")
    size = int(raw_max)
    skip_raw = one("$skiptoken") or "0"
    if not skip_raw.isdigit():
        raise bad_query("$skiptoken", skip_raw, "use the odata.nextLink of the previous page as it is")
    skip = int(skip_raw)
    chunk = items[skip:skip + size]
    select = one("$select")
    if select:
        names = [s.strip() for s in select.split(",") if s.strip()]
        chunk = [{k: v for k, v in i.items() if k in names} for i in chunk]
    out: dict[str, Any] = {"value": chunk}
    if skip + size < len(items):
        keep = {k: v[0] for k, v in query.items() if k != "$skiptoken"}
        keep["$skiptoken"] = str(skip + size)
        out["odata.nextLink"] = f"{base_url}?{urllib.parse.urlencode(keep)}"
    return out


def select_one(item: dict[str, Any], query: dict[str, list[str]]) -> dict[str, Any]:
    select = (query.get("$select") or [""])[0]
    check_expand(query)
    if not select:
        return item
    names = [s.strip() for s in select.split(",") if s.strip()]
    return {k: v for k, v in item.items() if k in names}
