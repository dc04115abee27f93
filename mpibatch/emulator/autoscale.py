"""The autoscale formula language evaluated ("Create an automatic formula for scaling compute nodes in a Batch
pool"): statements `$Var = expression;`, numbers, strings, the `TimeInterval_*` constants, arithmetic, comparisons,
`&& || !`, `?:`, vectors `{a, b}`, the functions (avg, ceil, floor, len, lg, ln, log, max, min, norm,
percentile, rand, range, round, std, stop, sum, time, val) and the sample operations of the service-defined
sample variables (GetSample, GetSamplePercent, GetSamplePeriod, Count, HistoryBeginTime).

Pure: `evaluate(formula, samples, now)` returns the targets and the results string the service answers;
the samples (the emulator's own task and node counts, one set a sampling) are given by the caller. The
variable names, tokens and parser are in mpibatch/emulator/autoscale_syntax.py."""
from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from .autoscale_syntax import SAMPLED, SETTABLE, FormulaError, Token, check

DEALLOCATION = ("requeue", "terminate", "taskcompletion", "retaineddata")
INTERVALS = {"Zero": 0.0, "100ns": 1e-7, "Microsecond": 1e-6, "Millisecond": 1e-3, "Second": 1.0, "Minute": 60.0,
             "Hour": 3600.0, "Day": 86400.0, "Week": 604800.0, "Year": 31536000.0}


@dataclass(frozen=True)
class Interval:
    seconds: float


@dataclass
class Samples:
    """What the sampled variables held at each sampling: (time, {variable: value}), oldest first."""
    taken: list[tuple[datetime, dict[str, float]]] = field(default_factory=list)
    period_s: float = 30.0


# -------------------------------------------------------------------------------------------- evaluation
def _vec(v: Any) -> list[float]:
    if isinstance(v, list):
        return [x for item in v for x in _vec(item)]
    if isinstance(v, Interval):
        return [v.seconds]
    if isinstance(v, (int, float)):
        return [float(v)]
    raise TypeError(f"{v!r} is not a number")


def _percentile(v: list[float], p: float) -> float:
    s = sorted(v)
    if not s:
        return 0.0
    k = (len(s) - 1) * max(0.0, min(100.0, p)) / 100
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def _std(v: list[float]) -> float:
    if not v:
        return 0.0
    mean = sum(v) / len(v)
    return math.sqrt(sum((x - mean) ** 2 for x in v) / len(v))


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "avg": lambda *a: (lambda v: sum(v) / len(v) if v else 0.0)(_vec(list(a))),
    "ceil": lambda x: float(math.ceil(x)), "floor": lambda x: float(math.floor(x)),
    "round": lambda x: float(math.floor(x + 0.5)), "len": lambda *a: float(len(_vec(list(a)))),
    "lg": lambda x: math.log2(x), "ln": lambda x: math.log(x), "log": lambda x: math.log10(x),
    "max": lambda *a: max(_vec(list(a))), "min": lambda *a: min(_vec(list(a))),
    "norm": lambda *a: math.sqrt(sum(x * x for x in _vec(list(a)))),
    "percentile": lambda v, p: _percentile(_vec(v), p), "rand": lambda: random.random(),
    "range": lambda *a: (lambda v: max(v) - min(v))(_vec(list(a))), "std": lambda *a: _std(_vec(list(a))),
    "sum": lambda *a: sum(_vec(list(a))), "val": lambda v, i: _vec(v)[int(i)],
}


class Evaluator:
    def __init__(self, samples: Samples, scalars: dict[str, float], now: datetime) -> None:
        self.samples, self.now = samples, now
        self.vars: dict[str, Any] = dict(scalars)
        self.stopped = False

    def run(self, statements: list[tuple[str, Any, Token]]) -> None:
        for name, e, tok in statements:
            if self.stopped:
                return
            value = self.eval(e)
            if not name:
                continue
            if name == "$NodeDeallocationOption" and str(value).lower() not in DEALLOCATION:
                raise FormulaError("InvalidAutoScaleFormula", f"$NodeDeallocationOption must be one of "
                                   f"{', '.join(DEALLOCATION)}", f"Line {tok.line}, Col {tok.col}")
            self.vars[name] = value

    def eval(self, e: Any) -> Any:
        kind, tok = e[0], e[-1]
        try:
            return getattr(self, f"_{kind}")(*e[1:-1])
        except FormulaError:
            raise
        except (TypeError, ValueError, ZeroDivisionError, IndexError, OverflowError) as err:
            raise FormulaError("FormulaEvaluationError", str(err), f"Line {tok.line}, Col {tok.col}") from None

    def _num(self, v: float) -> float:
        return v

    def _str(self, s: str) -> str:
        return s

    def _vec(self, items: list[Any]) -> list[Any]:
        return [self.eval(x) for x in items]

    def _var(self, name: str) -> Any:
        if name in self.vars:
            return self.vars[name]
        if name in SAMPLED:
            return ("sampled", name)
        if name.startswith("TimeInterval_") and name[13:] in INTERVALS:
            return Interval(INTERVALS[name[13:]])
        if name.lower() in DEALLOCATION:
            return name.lower()
        if name in SETTABLE:
            raise ValueError(f"{name} is read before it is set")
        raise ValueError(f"unknown variable {name}")

    def _call(self, name: str, args: list[Any]) -> Any:
        if name == "stop":
            self.stopped = True
            return 0.0
        if name == "time":
            return self.now if not args else datetime.fromisoformat(str(self.eval(args[0])).replace("Z", "+00:00"))
        fn = FUNCTIONS.get(name)
        if fn is None:
            raise ValueError(f"unknown function {name}")
        values = [self.eval(a) for a in args]
        return fn(*values)

    def _un(self, op: str, a: Any) -> Any:
        v = self.eval(a)
        if op == "!":
            return 0.0 if v else 1.0
        if op == "-":
            return Interval(-v.seconds) if isinstance(v, Interval) else [-x for x in _vec(v)] if isinstance(
                v, list) else -float(v)
        return v

    def _bin(self, op: str, a: Any, b: Any) -> Any:
        x = self.eval(a)
        if op in ("&&", "||"):  # short-circuit, as in C
            if (op == "&&") != bool(x):
                return 1.0 if x else 0.0
            return 1.0 if self.eval(b) else 0.0
        return binop(op, x, self.eval(b))

    def _if(self, c: Any, a: Any, b: Any) -> Any:
        return self.eval(a) if self.eval(c) else self.eval(b)

    def _method(self, obj: Any, name: str, args: list[Any]) -> Any:
        target = self.eval(obj)
        if isinstance(target, datetime) and name in ("Weekday", "Hour", "Day", "Month", "Year", "Minute"):
            return float(target.isoweekday() % 7 if name == "Weekday" else getattr(target, name.lower()))
        if not (isinstance(target, tuple) and target[0] == "sampled"):
            raise ValueError(f"{name}() applies to a sampled variable")
        return self.sample_op(target[1], name, [self.eval(a) for a in args], obj[-1])

    def sample_op(self, var: str, op: str, args: list[Any], tok: Token) -> Any:
        taken = self.samples.taken
        if op == "Count":
            return float(len(taken))
        if op == "GetSamplePeriod":
            return Interval(self.samples.period_s)
        if op == "HistoryBeginTime":
            return taken[0][0] if taken else self.now
        if op not in ("GetSample", "GetSamplePercent"):
            raise ValueError(f"unknown sample operation {op}")
        if args and not isinstance(args[0], Interval) and op == "GetSample" and len(args) == 1:
            n = int(_vec(args[0])[0])  # the last n samples
            return [values[var] for _, values in taken[-n:]][::-1]
        start = args[0].seconds if args and isinstance(args[0], Interval) else self.samples.period_s
        end = args[1].seconds if len(args) > 1 and isinstance(args[1], Interval) else 0.0
        window = [(t, v[var]) for t, v in taken
                  if self.now - timedelta(seconds=start) <= t <= self.now - timedelta(seconds=end)]
        wanted = max(1, round((start - end) / self.samples.period_s))
        percent = min(100.0, 100.0 * len(window) / wanted)
        if op == "GetSamplePercent":
            return percent
        need = float(args[-1]) if len(args) >= 2 and not isinstance(args[-1], Interval) else 0.0
        if percent < need:
            raise FormulaError("InsufficientSampleData", f"Insufficient data from data set: {var} wanted "
                               f"{need:g}%, received {percent:g}%", f"Line {tok.line}, Col {tok.col}")
        return [v for _, v in window][::-1]


def binop(op: str, x: Any, y: Any) -> Any:
    if isinstance(x, Interval) or isinstance(y, Interval):
        xs = x.seconds if isinstance(x, Interval) else float(x)
        ys = y.seconds if isinstance(y, Interval) else float(y)
        r = {"+": xs + ys, "-": xs - ys, "*": xs * ys, "/": xs / ys}.get(op)
        if r is not None:
            return Interval(r) if op in "+-*" or not isinstance(y, Interval) else r
        x, y = xs, ys
    if isinstance(x, datetime) and isinstance(y, datetime) and op == "-":
        return Interval((x - y).total_seconds())
    if isinstance(x, list) or isinstance(y, list):
        xs_, ys_ = _vec(x), _vec(y)
        if len(xs_) == 1:
            xs_ = xs_ * len(ys_)
        if len(ys_) == 1:
            ys_ = ys_ * len(xs_)
        return [binop(op, a, b) for a, b in zip(xs_, ys_)]
    if isinstance(x, str) or isinstance(y, str):
        if op in ("==", "!="):
            return 1.0 if (str(x).lower() == str(y).lower()) == (op == "==") else 0.0
        raise TypeError(f"'{op}' does not apply to strings")
    a, b = float(x), float(y)
    return {"+": lambda: a + b, "-": lambda: a - b, "*": lambda: a * b, "/": lambda: a / b,
            "==": lambda: float(a == b), "!=": lambda: float(a != b), "<": lambda: float(a < b),
            "<=": lambda: float(a <= b), ">": lambda: float(a > b), ">=": lambda: float(a >= b)}[op]()


def show(v: Any) -> str:
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() else repr(v)
    if isinstance(v, list):
        return "[" + ",".join(show(x) for x in _vec(v)) + "]"
    if isinstance(v, Interval):
        return f"{v.seconds:g}s"
    if isinstance(v, datetime):
        return v.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    return str(v)


def evaluate(formula: str, samples: Samples, scalars: dict[str, float], current: dict[str, Any],
             now: datetime | None = None) -> tuple[dict[str, Any], str]:
    """Run the formula; return ({settable variable: value}, the results string). `current` holds the
    settable variables' values before the run (a formula that does not set one keeps it)."""
    ev = Evaluator(samples, scalars, now or datetime.now(timezone.utc))
    ev.vars.update(current)
    ev.run(check(formula))
    targets = {k: ev.vars[k] for k in SETTABLE if k in ev.vars}
    for k in SETTABLE[:2]:
        v = _vec(targets.get(k, 0.0))
        targets[k] = max(0, int(v[0])) if v else 0
    targets["$NodeDeallocationOption"] = str(targets.get("$NodeDeallocationOption") or "requeue").lower()
    rest = [k for k in ev.vars if k not in SETTABLE and k not in scalars]
    results = ";".join(f"{k}={show(targets[k] if k in targets else ev.vars[k])}" for k in (*SETTABLE, *rest))
    return targets, results
