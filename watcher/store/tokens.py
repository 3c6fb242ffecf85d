"""Fencing tokens: one per claim, so a holder whose lease lapsed can never write or release."""

from __future__ import annotations

import secrets


def new_token(owner: str) -> str:
    """A token unique to one claim: the owner first (for logs), then random bits."""
    return f"{owner}:{secrets.token_hex(6)}"
