"""A Palisade output filter written in Python: masks email addresses.

Every email address in the generated text becomes `[email]` (config `mask`
changes it), even when the address arrives split across stream chunks, one
character at a time if need be. Text is released as soon as no address can
cover it: the filter holds back only the trailing run of characters an
address may be made of (letters, digits, `.`, `_`, `%`, `+`, `-`, `@`),
since that run could still become one, or grow into a longer one.

One instance serves one response, so the per-stream state (held-back text
per choice index) lives in module globals.
"""

import re

import wit_world
from wit_world.imports import config, log
from wit_world.imports.types import FilterVerdict, FilterVerdict_Emit

# An address is made of these characters only, so it never crosses another.
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_TAIL = re.compile(r"[A-Za-z0-9._%+@-]*\Z")

_held: dict[int, str] = {}
_masked: dict[int, int] = {}
_mask: str | None = None


def _config_mask() -> str:
    global _mask
    if _mask is None:
        _mask = config.get("mask") or "[email]"
    return _mask


def step(held: str, chunk: str, end: bool, mask: str = "[email]") -> tuple[str, str, int]:
    """Takes in `chunk` after the `held` text; returns the text to release
    now (addresses masked), the text to hold back, and how many addresses
    were masked. Until `end`, the trailing run of address characters is
    held: every address lies inside one such run, so what comes before the
    run is final."""
    text = held + chunk
    cut = len(text) if end else _TAIL.search(text).start()
    out, n = _EMAIL.subn(mask, text[:cut])
    return out, text[cut:], n


class WitWorld(wit_world.WitWorld):
    def prepare(self) -> None:
        # Called before any request reaches this instance, off the request
        # path: read the config now so the first chunk does not pay for it.
        _config_mask()

    def filter(self, index: int, chunk: str) -> FilterVerdict:
        out, _held[index], n = step(_held.get(index, ""), chunk, False, _config_mask())
        _masked[index] = _masked.get(index, 0) + n
        return FilterVerdict_Emit(out)

    def finish(self, index: int) -> FilterVerdict:
        out, _, n = step(_held.pop(index, ""), "", True, _config_mask())
        n += _masked.pop(index, 0)
        if n:
            log.log(log.Level.INFO, f"choice {index}: masked {n} email address(es)")
        return FilterVerdict_Emit(out)
