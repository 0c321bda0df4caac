"""Which RSA public keys we check signatures with: a DPoP proof's ``jwk`` (RFC 9449 §4.3) and a client's
registered ``jwks`` (RFC 7591 §2, private_key_jwt). Standard library only.

An RSA signature check costs square-and-multiply over the public exponent, a modular multiplication per
bit of ``e``, each costing the square of the modulus's length. Both are the key's to choose, and a DPoP
proof's key is anyone's: an anonymous proof with a huge ``e`` cost about 6 ms to check, 150 times an
ordinary one (review 129, finding 3). So we take:

- a modulus of 2048 bits at least (NIST SP 800-57 Part 1 §5.6.1) and 4096 at most: the largest any common
  library makes, and the largest a proof fits within its size caps (identity.dpop ``MAX_PROOF_LENGTH``);
- the exponent 65537 only (F4, ``AQAB``): RFC 7518 §6.3.1.2 names no exponent, but 65537 is what every
  library generates and what NIST SP 800-56B / FIPS 186-5 §A.1.1 make the least allowed; a larger one buys
  nothing and costs the verifier.
"""

from __future__ import annotations

import base64
import re

MIN_RSA_BITS = 2048
MAX_RSA_BITS = 4096
RSA_EXPONENT = 65537
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")
_MAX_N_CHARS = -(-MAX_RSA_BITS // 6) + 2  # base64url characters of a MAX_RSA_BITS modulus, and a zero byte

WEAK = "weak"
TOO_LARGE = "too_large"
EXPONENT = "exponent"
MALFORMED = "malformed"


def rsa_key_refusal(n: object, e: object) -> str | None:
    """None when an RSA jwk's ``n`` and ``e`` (RFC 7518 §6.3.1.1-2, base64url unsigned integers) make a key
    we check signatures with; else why not: ``MALFORMED``, ``WEAK`` (a modulus under MIN_RSA_BITS),
    ``TOO_LARGE`` (over MAX_RSA_BITS) or ``EXPONENT`` (not 65537)."""
    if not isinstance(n, str) or not isinstance(e, str):
        return MALFORMED
    if len(n) > _MAX_N_CHARS:
        return TOO_LARGE  # not even decoded
    modulus, exponent = _uint(n), _uint(e) if len(e) <= 8 else None
    if modulus is None:
        return MALFORMED
    bits = modulus.bit_length()
    if bits < MIN_RSA_BITS:
        return WEAK
    if bits > MAX_RSA_BITS:
        return TOO_LARGE
    if exponent != RSA_EXPONENT:
        return EXPONENT
    return None


def _uint(value: str) -> int | None:
    if not _BASE64URL.fullmatch(value):
        return None
    try:
        return int.from_bytes(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)), "big")
    except ValueError:
        return None
