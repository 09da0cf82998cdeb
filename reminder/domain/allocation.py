"""Which agency gets a case: weighted rendezvous hashing on the loan id.

Deterministic (the same portfolio always splits the same way), proportional to `share`,
and adding an agency only moves the loans that the new agency wins — about its share of
future placements — instead of reshuffling everyone.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence


def _uniform(agency_id: str, loan_id: str) -> float:
    digest = hashlib.sha256(f"{agency_id}\x00{loan_id}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") + 0.5) / 2.0**64  # in (0, 1)


def choose_agency(loan_id: str, agencies: Sequence[tuple[str, float]]) -> str:
    """The agency id, among (id, share) pairs, that wins `loan_id`."""
    if not agencies:
        raise ValueError("no agencies configured")
    return min(agencies, key=lambda item: -math.log(_uniform(item[0], loan_id)) / item[1])[0]
