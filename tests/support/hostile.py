"""The hostile request bodies of the serving hardening: key floods, empty records, deep JSON.

Shared by ``tests/integration/test_hostile.py``, ``tests/unit/test_hostile_input.py`` and
``benchmarks/serve/hostile.py``. Deep bodies are built as bytes: ``json.dumps`` itself recurses.
"""

from __future__ import annotations

import json
from typing import Any

_KEY_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def unknown_keys(n: int = 1000) -> dict[str, None]:
    """``n`` distinct unknown two-letter keys (``aa``, ``ab``, ...), each with ``null``."""
    keys = (a + b for a in _KEY_ALPHABET for b in _KEY_ALPHABET)
    return {k: None for k, _ in zip(keys, range(n), strict=False)}


def key_flood_batch(records: int, keys: int = 1000) -> bytes:
    """A batch of ``records`` records, each nothing but ``keys`` unknown keys (1.8 MB at 150)."""
    one = json.dumps(unknown_keys(keys))
    return ('{"records": [' + ", ".join([one] * records) + "]}").encode()


def empty_records_batch(records: int = 10_000) -> bytes:
    """``{"records": [{}, {}, ...]}``: every record misses every field (40 KB at 10,000)."""
    return b'{"records": [' + b", ".join([b"{}"] * records) + b"]}"


def deep_array(depth: int) -> bytes:
    """``[[[...]]]`` nested ``depth`` deep."""
    return b"[" * depth + b"]" * depth


def deep_field_record(record: dict[str, Any], field: str, depth: int) -> bytes:
    """``record`` with ``field`` replaced by an array nested ``depth`` deep."""
    marker = "__deep_marker__"
    text = json.dumps({**record, field: marker}).encode()
    return text.replace(f'"{marker}"'.encode(), deep_array(depth))


def deep_record_batch(record: dict[str, Any], depth: int) -> bytes:
    """A batch of one valid record followed by one record nested ``depth`` deep."""
    return b'{"records": [' + json.dumps(record).encode() + b", " + deep_array(depth) + b"]}"


def empty_records_at_cap(cap: int = 16 * 1024 * 1024) -> bytes:
    """As many empty records as fit under the body cap (5.6 million at 16 MiB)."""
    n = (cap - 20) // 3
    return b'{"records": [' + b",".join([b"{}"] * n) + b"]}"


def nested_lists_in_a_field(record: dict[str, object], cap: int = 16 * 1024 * 1024) -> bytes:
    """One record whose ``amount`` is a list of empty lists filling the body cap."""
    head = json.dumps({**record, "amount": "__lists__"}).encode()
    n = (cap - len(head) - 20) // 3
    lists = b"[" + b",".join([b"[]"] * n) + b"]"
    return b'{"records": [' + head.replace(b'"__lists__"', lists) + b"]}"
