"""Users' tokens: made at random, shown once, kept only as a salted scrypt hash.

A token made by :func:`new_token` reads ``mucosa_<id>_<secret>``: the id (12 hex digits) finds the user's
row without trying every hash, the secret (256 random bits) is what the hash protects. Anything else is
refused before any scrypt (:func:`split_token`), and so is a well-formed token whose id no user has: a junk
token costs the server next to nothing to refuse. A token chosen by hand (``mucosa serve --token``, for a
laptop; at least :data:`MIN_CHOSEN` characters) has no id: only the server running with it accepts it (it
keeps the token in memory), as the user :func:`chosen_token_name` names.

The hash is ``scrypt$N$r$p$salt$hash`` (salt and hash in hex), so its cost can be raised later without
breaking older tokens; tokens are compared in constant time.

Example:
    >>> token, token_id = new_token()
    >>> stored = hash_token(token)
    >>> verify_token(token, stored), verify_token(token + "x", stored)
    (True, False)
    >>> split_token(token)[0] == token_id
    True
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

__all__ = ["new_token", "hash_token", "verify_token", "split_token", "chosen_token_name", "PREFIX", "COST",
           "MIN_CHOSEN", "CHOSEN_PREFIX"]

PREFIX = "mucosa"
COST = (2**14, 8, 1)  # scrypt's N, r, p for new hashes: ~16 MiB and tens of milliseconds per check
MIN_CHOSEN = 16  # characters of a token chosen by hand (serve --token)
CHOSEN_PREFIX = "token-"  # the names of the users of hand-chosen tokens
_SALT_BYTES, _HASH_BYTES = 16, 32
_SECRET = re.compile(r"[A-Za-z0-9_-]{16,128}")
_NAME_SALT = b"mucosa serve --token"  # fixed: the same token names the same user on every start


def new_token() -> tuple[str, str]:
    """A fresh token and its public id."""
    token_id = secrets.token_hex(6)
    return f"{PREFIX}_{token_id}_{secrets.token_urlsafe(32)}", token_id


def split_token(token: str) -> tuple[str | None, str]:
    """``(id, token)`` of a token of the form :func:`new_token` makes (``mucosa_<12 hex>_<secret>``);
    ``(None, token)`` for anything else (a token chosen by hand, or junk). Cheap: no hash is computed."""
    parts = token[:200].split("_", 2) if len(token) <= 200 else []
    if len(parts) == 3 and parts[0] == PREFIX and len(parts[1]) == 12 and all(c in "0123456789abcdef"
                                                                                for c in parts[1]) \
            and _SECRET.fullmatch(parts[2]):
        return parts[1], token
    return None, token


def chosen_token_name(token: str) -> str:
    """The user name of a token chosen by hand: ``token-`` and 12 hex digits of its scrypt hash (a fixed salt,
    so the same token names the same user on every start; as costly to guess from as a stored hash)."""
    n, r, p = COST
    return CHOSEN_PREFIX + _scrypt(token, _NAME_SALT, n, r, p)[:6].hex()


def _scrypt(token: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(token.encode("utf-8", "surrogatepass"), salt=salt, n=n, r=r, p=p, dklen=_HASH_BYTES,
                          maxmem=256 * n * r * p)


def hash_token(token: str) -> str:
    """The stored form of a token: ``scrypt$N$r$p$salt$hash`` with a fresh random salt."""
    salt, (n, r, p) = secrets.token_bytes(_SALT_BYTES), COST
    return f"scrypt${n}${r}${p}${salt.hex()}${_scrypt(token, salt, n, r, p).hex()}"


def verify_token(token: str, stored: str) -> bool:
    """Whether ``token`` is the one ``stored`` was made from (a constant-time comparison)."""
    try:
        kind, n, r, p, salt, expected = stored.split("$")
        if kind != "scrypt":
            return False
        actual = _scrypt(token, bytes.fromhex(salt), int(n), int(r), int(p))
        return hmac.compare_digest(actual, bytes.fromhex(expected))
    except ValueError:  # a malformed stored hash matches nothing
        return False
