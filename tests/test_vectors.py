"""The in-tree copy of the contract's vectors must be the contract's own."""
from __future__ import annotations

import pytest

from tests.vectors import SHARED_PATH, VECTORS, VECTORS_PATH


def test_vectors_cover_every_part_of_the_contract():
    assert {"crc16_ccitt_false", "vlp_lines"} <= VECTORS.keys()
    assert len(VECTORS) >= 5


@pytest.mark.skipif(not SHARED_PATH.exists(), reason="no ../shared/contract-vectors.json beside this checkout")
def test_in_tree_copy_equals_the_contracts_vectors():
    assert VECTORS_PATH.read_bytes() == SHARED_PATH.read_bytes(), (
        f"{VECTORS_PATH} differs from {SHARED_PATH}: copy the contract's file over it")
