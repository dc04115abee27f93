"""The autoscale formula language's words and grammar ("Create an automatic formula for scaling compute nodes
in a Batch pool"): the settable, sampled and scalar variable names, the tokens, and a parser that turns
statements `$Var = expression;` into expression tuples. Pure: `check(formula)` parses only (what enable and
update check before they answer) and raises FormulaError; mpibatch/emulator/autoscale.py evaluates."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

SETTABLE = ("$TargetDedicatedNodes", "$TargetLowPriorityNodes", "$NodeDeallocationOption")
SAMPLED = ("$CPUPercent", "$WallClockSeconds", "$MemoryBytes", "$DiskBytes", "$DiskReadBytes", "$DiskWriteBytes",
           "$DiskReadOps", "$DiskWriteOps", "$NetworkInBytes", "$NetworkOutBytes", "$SampleNodeCount",
           "$ActiveTasks", "$RunningTasks", "$PendingTasks", "$SucceededTasks", "$FailedTasks")
SCALARS = ("$CurrentDedicatedNodes", "$CurrentLowPriorityNodes", "$UsableNodeCount", "$PreemptedNodeCount",
           "$TaskSlotsPerNode")
MAX_FORMULA = 8192  # characters; a formula is a few lines
TOKEN = re.compile(r"\s*(?:(?P<num>\d+(?:\.\d*)?(?:[eE][+-]?\d+)?)|(?P<str>\"[^\"]*\"|'[^']*')|"
                   r"(?P<name>\$?[A-Za-z_][A-Za-z0-9_]*)|(?P<op>&&|\|\||==|!=|<=|>=|[-+*/<>!?:=;(),.{}]))")


class FormulaError(Exception):
    """An error of the formula: `code` as the service names it, `message`, and where (line, column)."""

    def __init__(self, code: str, message: str, where: str = "") -> None:
        super().__init__(f"{where}: {message}" if where else message)
        self.code, self.message, self.where = code, message, where


@dataclass
class Token:
    kind: str
    text: str
    line: int
    col: int


def tokenize(text: str) -> list[Token]:
    if len(text) > MAX_FORMULA:
        raise FormulaError("InvalidAutoScaleFormula", f"the formula is longer than {MAX_FORMULA} characters")
    text = re.sub(r"//[^\n]*", "", text)  # comments
    out, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = TOKEN.match(text, pos)
        at = len(text) - len(text[pos:].lstrip())  # the offending character, after white space
        line = text.count("\n", 0, at) + 1
        col = at - (text.rfind("\n", 0, at) + 1) + 1
        if not m:
            raise FormulaError("InvalidAutoScaleFormula", f"unexpected character {text[pos:].lstrip()[:1]!r}",
                               f"Line {line}, Col {col}")
        kind = next(k for k in ("num", "str", "name", "op") if m.group(k) is not None)
        start = m.start(kind)
        out.append(Token(kind, m.group(kind), text.count("\n", 0, start) + 1,
                         start - (text.rfind("\n", 0, start) + 1) + 1))
        pos = m.end()
    out.append(Token("end", "", text.count("\n") + 1, 1))
    return out


# -------------------------------------------------------------------------------------------- parsing
# Expressions are tuples: ("num", v) ("str", s) ("var", name) ("vec", [e]) ("call", name, [e])
# ("method", obj, name, [e]) ("un", op, e) ("bin", op, a, b) ("if", c, a, b), each with its token last.
BINARY = [("||",), ("&&",), ("==", "!="), ("<", "<=", ">", ">="), ("+", "-"), ("*", "/")]


class Parser:
    def __init__(self, text: str) -> None:
        self.toks = tokenize(text)
        self.i = 0

    def peek(self) -> Token:
        return self.toks[self.i]

    def take(self, text: str | None = None) -> Token:
        t = self.toks[self.i]
        if text is not None and t.text != text:
            self.fail(t, f"expected '{text}', found '{t.text or 'the end'}'")
        self.i += 1
        return t

    @staticmethod
    def fail(t: Token, message: str) -> FormulaError:
        raise FormulaError("InvalidAutoScaleFormula", message, f"Line {t.line}, Col {t.col}")

    def statements(self) -> list[tuple[str, Any, Token]]:
        out = []
        while self.peek().kind != "end":
            if self.peek().text == ";":
                self.take()
                continue
            if self.peek().kind == "name" and self.toks[self.i + 1].text == "(":  # a call alone: stop()
                first = self.peek()
                out.append(("", self.expr(), first))
                if self.peek().kind != "end":
                    self.take(";")
                continue
            name = self.take()
            if name.kind != "name":
                self.fail(name, f"expected a variable to assign, found '{name.text}'")
            if name.text in SAMPLED + SCALARS:
                self.fail(name, f"{name.text} is read-only")
            self.take("=")
            out.append((name.text, self.expr(), name))
            if self.peek().kind != "end":
                self.take(";")
        return out

    def expr(self) -> Any:
        cond = self.binary(0)
        if self.peek().text == "?":
            t = self.take()
            a = self.expr()
            self.take(":")
            return ("if", cond, a, self.expr(), t)
        return cond

    def binary(self, level: int) -> Any:
        if level == len(BINARY):
            return self.unary()
        left = self.binary(level + 1)
        while self.peek().text in BINARY[level]:
            t = self.take()
            left = ("bin", t.text, left, self.binary(level + 1), t)
        return left

    def unary(self) -> Any:
        if self.peek().text in ("-", "!", "+"):
            t = self.take()
            return ("un", t.text, self.unary(), t)
        return self.postfix(self.primary())

    def postfix(self, node: Any) -> Any:
        while self.peek().text == ".":
            self.take()
            name = self.take()
            node = ("method", node, name.text, self.args(), name)
        return node

    def args(self) -> list[Any]:
        self.take("(")
        out = []
        while self.peek().text != ")":
            out.append(self.expr())
            if self.peek().text != ")":
                self.take(",")
        self.take(")")
        return out

    def primary(self) -> Any:
        t = self.take()
        if t.kind == "num":
            return ("num", float(t.text), t)
        if t.kind == "str":
            return ("str", t.text[1:-1], t)
        if t.text == "(":
            e = self.expr()
            self.take(")")
            return e
        if t.text == "{":
            items = []
            while self.peek().text != "}":
                items.append(self.expr())
                if self.peek().text != "}":
                    self.take(",")
            self.take("}")
            return ("vec", items, t)
        if t.kind == "name":
            if self.peek().text == "(" and not t.text.startswith("$"):
                return ("call", t.text, self.args(), t)
            return ("var", t.text, t)
        self.fail(t, f"unexpected '{t.text or 'end of formula'}'")


def check(formula: str) -> list[tuple[str, Any, Token]]:
    """Parse only (what enable and update check before they answer); raises FormulaError."""
    if not formula.strip():
        raise FormulaError("InvalidAutoScaleFormula", "the formula is empty")
    return Parser(formula).statements()
