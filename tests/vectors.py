"""The worked examples of the contract (`../shared/CONTRACT.md`), for every test that checks
against them.

`tests/contract-vectors.json` is a byte-for-byte copy of `../shared/contract-vectors.json`, kept in
the tree so the suite runs on a checkout that has no `../shared` beside it;
`tests/test_vectors.py` fails when the two differ.
"""
from __future__ import annotations

import json
from pathlib import Path

VECTORS_PATH = Path(__file__).with_name("contract-vectors.json")
SHARED_PATH = Path(__file__).resolve().parents[2] / "shared" / "contract-vectors.json"

VECTORS: dict = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
