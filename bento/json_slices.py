"""A batch body's records parsed in slices, so no single parser call holds the interpreter lock
for a whole 10,000-record body.

pydantic-core parses a body in one C call that holds the interpreter lock throughout (about
18 ms per 10,000 records on an idle core): the event loop, and with it every single-row request,
waits that long. :func:`parse_in_slices` cuts the ``records`` array at record boundaries into
slices of about :data:`SLICE_BYTES` and parses each with the same parser, so the lock is let go
between slices.

The cut is found with C-speed byte searches only, and it is proven, not guessed: the envelope
around the array must match a strict pattern (``{"records": [ ... ]}`` with an optional plain
``request_id`` before or after it), each cut is at ``}`` ``,`` ``{``, and each slice must parse
on its own (see :func:`_parse_piece`). A cut inside a string leaves that string open at the
end of its slice, a cut inside a nested value leaves a bracket open, and a slice that closes
the array early gives the outer array more than two elements: each is refused, and the next
candidate cut is tried (a few at most). So when every slice parses, the records are exactly
those of the whole body; when one does not (or the envelope is anything else), the caller
parses the whole body as before and gets the parser's own error. The duplicate-key, number,
depth and UTF-8 rules are the parser's, slice by slice: the cuts fall on ASCII bytes between
records.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic_core import from_json

from data_contracts.artifacts import RECORDS_FIELD

# bytes of records per parser call: about 1,000 records of the default spec, 1-2 ms of lock
SLICE_BYTES = 256 * 1024

_WS = rb"[ \t\n\r]*"  # JSON's whitespace (not Python's: no form feed, no vertical tab)
_ID = rb'"request_id"' + _WS + rb":" + _WS + rb'("[^"\\\x00-\x1f]*")'
_HEAD = re.compile(
    rb"\A" + _WS + rb"\{" + _WS + rb"(?:" + _ID + _WS + rb"," + _WS + rb")?"
    rb'"' + RECORDS_FIELD.encode() + rb'"' + _WS + rb":" + _WS + rb"\["
)
# searched in the body's last bytes only: the records' closing bracket and what may follow it
_TAIL = re.compile(rb"\]" + _WS + rb"(?:," + _WS + _ID + _WS + rb")?\}" + _WS + rb"\Z")
_TAIL_BYTES = 512
_CUT = re.compile(rb"\}" + _WS + rb"," + _WS + rb"\{")


# candidate cuts tried in a row when a slice does not parse (a string holding ``},{`` makes a
# false candidate): the next one is usually the record boundary; bounded, so a hostile body
# costs at most a few parses of each slice before the whole body is parsed once
MAX_RETRIES = 3


def _parse_piece(body: bytes, start: int, stop: int) -> list[Any] | None:
    """The records in ``body[start:stop]``, or None when that is not a list of JSON values.

    Parsed as ``[[piece],0]``: the records nest as deep as in the whole body (the parser's
    depth limit counts the same), and a piece that closes the array early and opens another
    (``...}], [{...``) gives the outer array more than two elements, so it is refused.
    """
    try:
        parsed = from_json(b"[[" + body[start:stop] + b"],0]")
    except Exception:  # whatever the parser refuses, the whole body's parse words it
        return None
    return parsed[0] if len(parsed) == 2 else None


def parse_records(body: bytes, start: int, end: int, size: int = SLICE_BYTES) -> list[Any] | None:
    """The values of the array content ``body[start:end]``, parsed about ``size`` bytes at a
    time, each slice ending at a ``}`` ``,`` ``{`` candidate; None when a slice does not parse
    after :data:`MAX_RETRIES` further candidates."""
    records: list[Any] = []
    at = start
    while at < end:
        search_from, tries = at + size, 0
        while True:
            found = _CUT.search(body, search_from, end) if search_from < end else None
            stop = end if found is None else found.start() + 1
            piece = _parse_piece(body, at, stop)
            if piece is not None:
                break
            if found is None or tries == MAX_RETRIES:
                return None
            search_from, tries = found.start() + 1, tries + 1
        records += piece
        at = end if found is None else found.end() - 1
    return records


def parse_in_slices(body: bytes, size: int = SLICE_BYTES) -> dict[str, Any] | None:
    """The batch body parsed as ``{"records": [...], "request_id": ...}`` with one parser call
    per slice of about ``size`` bytes of records, or None when the body is not of that plain
    shape or a slice does not parse (the caller then parses it whole). Never raises."""
    head = _HEAD.match(body)
    if head is None:
        return None
    tail = _TAIL.search(body, max(head.end(), len(body) - _TAIL_BYTES))
    if tail is None:
        return None
    out: dict[str, Any] = {}
    try:
        for found in (head, tail):  # a duplicate key: the last one wins, as in the parser
            if found.group(1) is not None:
                out["request_id"] = from_json(found.group(1))
    except ValueError:
        return None
    records = parse_records(body, head.end(), tail.start(), size)
    if records is None:
        return None
    return {RECORDS_FIELD: records, **out}
