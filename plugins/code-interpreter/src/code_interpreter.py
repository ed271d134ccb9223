"""Palisade's code-interpreter tool: runs model-written Python in CPython
compiled to a WebAssembly component (componentize-py).

`invoke('{"code": "..."}')` runs the code like a notebook cell: every
statement is executed, and when the last one is an expression its value is
evaluated and returned as `result` (its `repr`). The answer is JSON:

    {"stdout": "...", "stderr": "...", "result": "42" | null,
     "error": "ValueError: bad value\\n  line 3, in f" | null,
     "truncated": ["stdout"]}

Each of `stdout`, `stderr`, `result` and `error` is capped (config
`max_output_bytes`, default 65536, in UTF-8 bytes). Output is counted as it
is written: the write that crosses the cap keeps what fits and raises
`OutputLimitExceeded`, so `print`ing a gigabyte stops after the cap, not
after a gigabyte was buffered. Later writes raise again, so code that
catches the exception cannot keep writing.

The sandbox is the component, not this file: no files (no preopened
directory), no sockets, no subprocesses, no environment, a frozen clock
unless the policy grants one, and the host's deadline and memory cap on
every call. Each call runs in a fresh instance, so nothing leaks between
calls. What this file adds is clear errors: a recursion limit well below
the point where the WebAssembly stack would overflow (config
`max_recursion`, default 200), `MemoryError` as an error value, and the
caps above.

Standard library: componentize-py snapshots the interpreter after this
module is imported, and the component carries no file system, so only
modules imported here (and what they import) exist at call time. The
modules of `STDLIB` below are therefore imported at the top level; a module
outside the list fails with a plain `ModuleNotFoundError`.
"""

import ast
import builtins
import json
import linecache
import sys
import traceback

# The standard library the tool offers (imported now so they are in the
# snapshot; see the module docstring). `import x` in user code finds them
# in `sys.modules`.
import array  # noqa: F401
import base64  # noqa: F401
import bisect  # noqa: F401
import calendar  # noqa: F401
import cmath  # noqa: F401
import collections  # noqa: F401
import collections.abc  # noqa: F401
import copy  # noqa: F401
import csv  # noqa: F401
import dataclasses  # noqa: F401
import datetime  # noqa: F401
import decimal  # noqa: F401
import difflib  # noqa: F401
import enum  # noqa: F401
import fractions  # noqa: F401
import functools  # noqa: F401
import hashlib  # noqa: F401
import heapq  # noqa: F401
import io  # noqa: F401
import itertools  # noqa: F401
import math  # noqa: F401
import operator  # noqa: F401
import pprint  # noqa: F401
import random  # noqa: F401
import re  # noqa: F401
import statistics  # noqa: F401
import string  # noqa: F401
import textwrap  # noqa: F401
import time  # noqa: F401
import typing  # noqa: F401
import unicodedata  # noqa: F401
import uuid  # noqa: F401
import zlib  # noqa: F401

import wit_world
from componentize_py_types import Err
from wit_world.imports import config
from wit_world.imports.types import ToolDescription

STDLIB = sorted(
    "array base64 bisect calendar cmath collections copy csv dataclasses datetime decimal difflib "
    "enum fractions functools hashlib heapq io itertools json math operator pprint random re "
    "statistics string textwrap time typing unicodedata uuid zlib".split()
)

DEFAULT_MAX_OUTPUT = 64 << 10
DEFAULT_MAX_RECURSION = 200
DEFAULT_MAX_CODE = 256 << 10
# Frames of the traceback kept in `error` (the innermost ones).
TRACEBACK_FRAMES = 5

SCHEMA = json.dumps({
    "type": "object",
    "properties": {"code": {"type": "string", "description": "Python 3 source; the value of a final expression is returned"}},
    "required": ["code"],
    "additionalProperties": False,
})


class OutputLimitExceeded(BaseException):
    """Raised by a capped stream once its cap is reached. A BaseException, so
    a plain `except Exception` in user code does not swallow it."""


class CappedStream(io.TextIOBase):
    """A text stream that keeps at most `cap` UTF-8 bytes and raises once
    more is written."""

    def __init__(self, name: str, cap: int):
        self.name = name
        self.cap = cap
        self.parts: list[str] = []
        self.size = 0
        self.overflowed = False

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        if self.overflowed:
            raise OutputLimitExceeded(f"{self.name} larger than {self.cap} bytes")
        n = len(s.encode("utf-8", "surrogatepass"))
        if self.size + n > self.cap:
            self.parts.append(clip(s, self.cap - self.size))
            self.size = self.cap
            self.overflowed = True
            raise OutputLimitExceeded(f"{self.name} larger than {self.cap} bytes")
        self.parts.append(s)
        self.size += n
        return len(s)

    def getvalue(self) -> str:
        return "".join(self.parts)


def clip(s: str, cap: int) -> str:
    """`s` cut to at most `cap` UTF-8 bytes, on a character boundary."""
    b = s.encode("utf-8", "surrogatepass")
    if len(b) <= cap:
        return s
    return b[:cap].decode("utf-8", "ignore")


def config_int(key: str, default: int) -> int:
    v = config.get(key)
    if v is None:
        return default
    try:
        n = int(v.strip())
    except ValueError:
        raise Err(f"config `{key}`: `{v}` is not an integer")
    if n <= 0:
        raise Err(f"config `{key}` must be positive, not {n}")
    return n


def format_error(e: BaseException) -> str:
    """`Type: message` and the innermost frames of user code."""
    if isinstance(e, SyntaxError):
        where = f" (line {e.lineno})" if e.lineno else ""
        text = f"\n    {e.text.rstrip()}" if e.text else ""
        return f"{type(e).__name__}: {e.msg}{where}{text}"
    head = "".join(traceback.format_exception_only(type(e), e)).rstrip()
    frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename == "<code>"]
    lines = [f"  line {f.lineno}, in {f.name}" + (f": {f.line}" if f.line else "") for f in frames[-TRACEBACK_FRAMES:]]
    if len(frames) > TRACEBACK_FRAMES:
        lines.insert(0, f"  ... {len(frames) - TRACEBACK_FRAMES} more frames")
    return "\n".join([head, *lines])


class Cell:
    """One run of user code, with its captured output."""

    def __init__(self, cap: int):
        self.cap = cap
        self.stdout = CappedStream("stdout", cap)
        self.stderr = CappedStream("stderr", cap)
        self.result: str | None = None
        self.error: str | None = None

    def run(self, code: str, recursion: int) -> None:
        try:
            tree = ast.parse(code, "<code>", "exec")
        except SyntaxError as e:
            self.error = format_error(e)
            return
        # Tracebacks show the lines of the code itself.
        linecache.cache["<code>"] = (len(code), None, code.splitlines(True), "<code>")
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        namespace = {"__name__": "__main__", "__builtins__": builtins}
        saved = (sys.stdout, sys.stderr, sys.getrecursionlimit())
        sys.stdout, sys.stderr = self.stdout, self.stderr
        try:
            # The limit counts frames from here; user code gets `recursion`.
            sys.setrecursionlimit(recursion + len(traceback.extract_stack()) + 20)
            exec(compile(tree, "<code>", "exec"), namespace)
            if last is not None:
                value = eval(compile(last, "<code>", "eval"), namespace)
                if value is not None:
                    self.result = repr(value)
        except OutputLimitExceeded as e:
            self.error = f"OutputLimitExceeded: {e}; output truncated"
        except MemoryError:
            self.error = "MemoryError: out of memory (the tool's memory limit)"
        except RecursionError as e:
            self.error = f"RecursionError: {e}"
        except BaseException as e:  # noqa: BLE001 - every failure of user code is reported
            self.error = format_error(e)
        finally:
            sys.stdout, sys.stderr = saved[0], saved[1]
            sys.setrecursionlimit(saved[2])

    def answer(self) -> str:
        truncated = [s.name for s in (self.stdout, self.stderr) if s.overflowed]
        out = {"stdout": self.stdout.getvalue(), "stderr": self.stderr.getvalue(), "result": None, "error": None}
        for key in ("result", "error"):
            v = getattr(self, key)
            if v is not None:
                clipped = clip(v, self.cap)
                if clipped != v:
                    truncated.append(key)
                out[key] = clipped
        out["truncated"] = truncated
        return json.dumps(out)


class WitWorld(wit_world.WitWorld):
    def prepare(self) -> None:
        # Checked here so a bad config fails the instance, not a call.
        config_int("max_output_bytes", DEFAULT_MAX_OUTPUT)
        config_int("max_recursion", DEFAULT_MAX_RECURSION)
        config_int("max_code_bytes", DEFAULT_MAX_CODE)

    def describe(self) -> ToolDescription:
        return ToolDescription(
            name="code_interpreter",
            description="Runs Python 3 code in a sandbox (no files, no network) and returns stdout, stderr, "
            "the value of the last expression and any error. Standard library: " + ", ".join(STDLIB) + ".",
            parameters_schema=SCHEMA,
        )

    def invoke(self, arguments: str) -> str:
        try:
            args = json.loads(arguments)
        except ValueError as e:
            raise Err(f"arguments are not JSON: {e}")
        if not isinstance(args, dict) or not isinstance(args.get("code"), str):
            raise Err('arguments must be an object with a string `code`: {"code": "print(1)"}')
        extra = sorted(set(args) - {"code"})
        if extra:
            raise Err(f"unknown argument(s): {', '.join(extra)} (only `code`)")
        code = args["code"]
        max_code = config_int("max_code_bytes", DEFAULT_MAX_CODE)
        if len(code.encode("utf-8", "surrogatepass")) > max_code:
            raise Err(f"code larger than {max_code} bytes")
        cell = Cell(config_int("max_output_bytes", DEFAULT_MAX_OUTPUT))
        cell.run(code, config_int("max_recursion", DEFAULT_MAX_RECURSION))
        return cell.answer()
