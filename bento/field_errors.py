"""Readable, bounded field errors: pydantic's errors in the API's words, and one answer's cap.

:func:`describe_errors` turns a pydantic ``ValidationError`` into :class:`FieldError` entries
(the problem named the way the API documents it), :func:`shown_name` makes a caller's key name
safe to show, and :class:`ErrorBudget` caps the entries of one answer at
:data:`MAX_ERRORS_PER_REQUEST`, counting those left out. Separate from the models
(:mod:`bento.request_model`) and from the checking (:mod:`bento.record_checker`): this is what a
refusal says, whichever check found the problem.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from pydantic import ValidationError

from bento.request_model import (
    MAX_ERRORS_PER_REQUEST,
    MAX_NAME_SHOWN,
    REQUEST_ID,
    REQUEST_ID_CHARS,
    FieldError,
    unsafe_character,
)

# pydantic error type -> the problem reported to the caller
_PROBLEMS = {
    "missing": "missing",
    "extra_forbidden": "unknown field",
    "finite_number": "NaN or infinite",
    "greater_than_equal": "out of range",
    "less_than_equal": "out of range",
    "greater_than": "out of range",
    "less_than": "out of range",
    "literal_error": "unknown category",
    "multiple_of": "not a whole number",
    "string_too_long": "too long",
    "too_long": "too many records",
    "too_short": "no records",
    "json_invalid": "invalid JSON",
    "json_type": "invalid JSON",
}
_SCANNED = 1024  # characters of a refused value searched for the control character to name
_KEY_PROBLEMS = {"missing", "extra_forbidden", "json_invalid", "json_type"}
# a failed member of "X | None" adds the member's type name to the location
_TYPE_TAGS = {"float", "str", "bool", "int", "constrained-float", "function-after", "literal"}


def describe_errors(
    err: ValidationError,
    *,
    batch: bool = False,
    index: int | None = None,
    max_lengths: Mapping[str, int] | None = None,
) -> list[FieldError]:
    """Readable field errors from a pydantic error; for a batch the record index is split off.

    ``index`` is the record's position when ``err`` is about one record of a batch;
    ``max_lengths`` (field -> limit) turns an over-long value of a closed category into
    "too long" rather than "unknown category".
    """
    out: list[FieldError] = []
    for e in err.errors(include_url=False, include_context=False):
        loc = list(e["loc"])
        at = index
        if batch and len(loc) >= 2 and loc[0] == "records" and isinstance(loc[1], int):
            at = loc[1]
            loc = loc[2:]
        # a failed member of "X | None" adds the member's type name to the location
        loc = [p for p in loc if not (isinstance(p, str) and p in _TYPE_TAGS)]
        kind = e["type"]
        value = e.get("input", 0)
        name = ".".join(str(p) for p in loc) or "body"
        message = e["msg"]
        if kind in _KEY_PROBLEMS:
            problem = _PROBLEMS[kind]
            if kind == "extra_forbidden":
                name = shown_name(name)
        elif value is None:
            problem = "null not allowed"
        elif kind == "literal_error" and not isinstance(value, str):
            problem = "wrong type"
        elif kind == "string_pattern_mismatch" and name == REQUEST_ID:
            problem = "invalid characters"
            message = f"A request id may hold only {REQUEST_ID_CHARS}"
        elif kind == "literal_error" and max_lengths and len(value) > max_lengths.get(name, 1e9):
            problem = "too long"
            message = f"String should have at most {max_lengths[name]} characters"
        elif kind == "string_pattern_mismatch" or (
            kind == "literal_error" and unsafe_character(value[:_SCANNED])
        ):  # the pattern of open categories and transaction ids; a closed category says it too
            where = unsafe_character(value[:_SCANNED])
            problem = "control character"
            message = "String should not contain control or formatting characters" + (
                f" ({where})" if where else ""
            )
        elif kind == "float_type" and isinstance(value, int) and not isinstance(value, bool):
            # an integer too large for a float: what the JSON parser reports as infinite
            problem = "NaN or infinite"
        else:
            problem = _PROBLEMS.get(kind, "wrong type")
        out.append(FieldError(index=at, field=name, problem=problem, message=message))
    return _dedupe(out)


def shown_name(name: str) -> str:
    """A caller's key name as it may appear in an answer, a log line or a metric label:
    non-printable and non-ASCII characters escaped, cut to :data:`MAX_NAME_SHOWN` characters."""
    escaped = name if name.isascii() and name.isprintable() else ascii(name)[1:-1]
    if len(escaped) <= MAX_NAME_SHOWN:
        return escaped
    return f"{escaped[:MAX_NAME_SHOWN]}...(+{len(escaped) - MAX_NAME_SHOWN} characters)"


@dataclass
class ErrorBudget:
    """The error entries of one answer: at most ``limit``, and a count of those left out."""

    limit: int = MAX_ERRORS_PER_REQUEST
    errors: list[FieldError] = field(default_factory=list)
    omitted: int = 0

    @property
    def full(self) -> bool:
        return len(self.errors) >= self.limit

    def add(self, errors: list[FieldError], problems: int | None = None) -> None:
        """Keep what fits of one record's (or one request's) entries.

        ``problems`` (default ``len(errors)``) is how many were found; entries kept in full
        speak for all of them (a record's last entry states how many it does not list), so only
        the problems behind entries that did not fit are added to :attr:`omitted`.
        """
        found = len(errors) if problems is None else problems
        kept = errors[: max(0, self.limit - len(self.errors))]
        self.errors.extend(kept)
        represented = found if errors and len(kept) == len(errors) else len(kept)
        self.omitted += max(0, found - represented)


def _dedupe(errors: list[FieldError]) -> list[FieldError]:
    seen: set[tuple[int | None, str, str]] = set()
    out = []
    for e in errors:
        key = (e.index, e.field, e.problem)
        if key not in seen:
            seen.add(key)
            out.append(e)
    return out
