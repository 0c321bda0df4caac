"""DPoP (RFC 9449): checking the proof a client sends to show it holds the key its token is bound to.

A DPoP proof is a JWT signed with the client's own key, whose public half travels in the ``jwk``
header. The token endpoint binds the access token to that key (``cnf.jkt``, the RFC 7638 thumbprint);
a resource server then accepts the token only with a fresh proof from the same key, naming this very
request (``htm``, ``htu``) and this very token (``ath``). ``DPoPVerifier.verify`` is the RFC 9449 §4.3
check list, one guard per rule and one reason code per guard::

    proof ──size/shape──▶ header: typ=dpop+jwt, alg ∈ allow-list, jwk public and fit for alg
                          (an RSA jwk: 2048 to 4096 bits, e = 65537, identity.domain.rsa_keys)
          ──signature with jwk──▶ claims: jti, htm, htu, iat window, ath
          ──claim (jkt, jti) once with SET NX, refused for a proof from before the cache's epoch──▶
          DPoPProof (frozen)

The single use holds as long as the cache's data does. A Redis that lost its claims (restarted
empty, flushed, or started from an older snapshot) would take a proof used just before for an unused
one: the claim is refused for a proof that could have been accepted before the cache's dataset began
(quaygate/dataset.py), one whose ``iat`` is earlier than the epoch plus the leeway a client's clock may
be ahead by, unless it carries the epoch's nonce. It is refused with ``use_dpop_nonce`` and that nonce
(RFC 9449 §8 at the token endpoint, §9 at a resource server: ``DPoPError.nonce``, sent as
``DPoP-Nonce``); the client makes a new proof with it, accepted at once. Outside those moments no nonce
is asked for, and one a proof carries is not needed.

Errors are RFC 9449 §7.1 / §5 codes: ``invalid_dpop_proof`` and ``use_dpop_nonce``. The description
is safe to send back; the reason code is for the log. joserfc is reached with an explicit registry of
asymmetric algorithms only: never ``none``, never HMAC (a symmetric "key" in the header would prove
nothing).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OKPKey, RSAKey
from joserfc.jws import JWSRegistry
from joserfc.util import urlsafe_b64decode

from quaygate.cache import Cache
from quaygate.dataset import Claim

from .domain import rsa_keys

log = logging.getLogger(__name__)

DPOP_TYP = "dpop+jwt"  # RFC 9449 §4.2
# Advertised as dpop_signing_alg_values_supported (RFC 9449 §5.1). Asymmetric only (RFC 9449 §4.2:
# "MUST NOT be none or an identifier for a symmetric algorithm").
DPOP_ALGORITHMS: tuple[str, ...] = ("ES256", "RS256", "PS256", "Ed25519")
_KEY_TYPES: dict[str, tuple[type, str, str | None]] = {  # alg -> (joserfc key class, kty, crv)
    "ES256": (ECKey, "EC", "P-256"),
    "RS256": (RSAKey, "RSA", None),
    "PS256": (RSAKey, "RSA", None),
    "Ed25519": (OKPKey, "OKP", "Ed25519"),  # RFC 9864 fully specified; "EdDSA" is deprecated there
}
MAX_NONCE_LENGTH = 256
_NQCHARS = frozenset(chr(c) for c in range(0x21, 0x7F) if c not in (0x22, 0x5C))  # RFC 9449 §4.2: NQCHAR
# Private members of RFC 7518 §6 / RFC 8037 §2 keys: a proof carrying one leaks the client's key.
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
MAX_PROOF_LENGTH = 8192  # an RSA-4096 proof is about 2 kB; anything much larger is not a proof
MAX_JTI_LENGTH = 256
_DEFAULT_PORTS = {"http": 80, "https": 443}
_MEMO_MAX = 1024  # distinct proof headers (client keys) and htu values remembered; cleared when full


# identity.domain.rsa_keys's refusals, as a proof's (review 129, finding 3: a huge exponent made an
# anonymous proof 150 times as costly to check).
_RSA_REFUSALS = {
    rsa_keys.MALFORMED: ("jwk_invalid", "the proof's jwk is not a valid public key"),
    rsa_keys.WEAK: ("jwk_weak", "the proof's RSA key is shorter than 2048 bits"),
    rsa_keys.TOO_LARGE: ("jwk_unsupported", "the proof's RSA key is longer than 4096 bits"),
    rsa_keys.EXPONENT: ("jwk_unsupported", "the proof's RSA key has an exponent other than 65537"),
}


class _ProofRegistry(JWSRegistry):
    # joserfc caps a header at 512 bytes by default; a proof's header carries a whole public key
    # (an RSA-4096 jwk is about 1 kB encoded). The overall cap is MAX_PROOF_LENGTH.
    max_header_length = 3072
    max_payload_length = 2048
    max_signature_length = 1024

# Header members that change how a JWS is read (RFC 7515 §4.1.11 crit, RFC 7797 b64): a proof needs
# neither, and a header carrying one is checked whole on every proof, never remembered.
_EXTENDED = frozenset({"crit", "b64"})


@dataclass(frozen=True)
class _Known:
    """A protected header that passed every header guard: its key, public jwk, thumbprint and alg."""

    key: Any
    jwk: dict[str, Any]
    jkt: str
    alg: Any


INVALID_DPOP_PROOF = "invalid_dpop_proof"
USE_DPOP_NONCE = "use_dpop_nonce"


class DPoPError(Exception):
    """A DPoP proof is refused. ``error`` is ``invalid_dpop_proof`` (RFC 9449 §5 at the token
    endpoint, §7.1 at a resource server) or ``use_dpop_nonce`` (§8, §9); ``description`` is safe to
    return to the client; ``reason`` is a short code for the log (``identity.dpop.refused.<reason>``)."""

    def __init__(self, error: str, description: str, *, reason: str = "invalid", nonce: str | None = None) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.reason = reason
        self.nonce = nonce  # with ``use_dpop_nonce``: what the answer's ``DPoP-Nonce`` header gives


@dataclass(frozen=True)
class DPoPProof:
    """A verified proof: ``jkt`` is the RFC 7638 thumbprint of its key, what ``cnf.jkt`` binds to."""

    jkt: str
    jti: str
    htm: str
    htu: str
    iat: int
    ath: str | None
    jwk: dict[str, Any]
    # Verified with ``claim=False``: the single-use claim still to make (``DPoPVerifier.claim``).
    unclaimed: SingleUse | None = None


@dataclass(frozen=True)
class SingleUse:
    """A proof's single-use claim: the cache key, its lifetime in seconds, the earliest moment the proof
    could have been accepted, and the nonce it carries (quaygate/dataset.py, the epoch's)."""

    key: str
    ttl: int
    usable_from: float
    nonce: str | None


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


_THUMBPRINT_MEMBERS = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x")}


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 §3: SHA-256 over the required members only, in lexicographic order, no whitespace;
    base64url without padding (RFC 9449 §6.1 ``jkt``)."""
    kty = jwk.get("kty")
    members = _THUMBPRINT_MEMBERS.get(kty) if isinstance(kty, str) else None
    if members is None:
        raise ValueError("unsupported key type for a thumbprint")
    subset = {}
    for m in members:
        value = jwk.get(m)
        if not isinstance(value, str) or not value:
            raise ValueError(f"key member {m} missing")
        subset[m] = value
    canonical = json.dumps(subset, separators=(",", ":"), sort_keys=True, ensure_ascii=True)
    return _b64url(hashlib.sha256(canonical.encode("utf-8")).digest())


def access_token_hash(token: str) -> str:
    """RFC 9449 §4.2 ``ath``: base64url of the SHA-256 of the ASCII access token."""
    return _b64url(hashlib.sha256(token.encode("ascii")).digest())


def normalise_htu(uri: str) -> str | None:
    """The comparable form of an HTTP URI (RFC 9449 §4.3 item 9, RFC 3986 §6.2.2-6.2.3): query and
    fragment dropped, scheme and host lowercased, default port removed, empty path as ``/``.
    None when it is not an absolute http(s) URI."""
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname or parts.username is not None:
        return None
    host = parts.hostname.lower()
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = host if port is None or port == _DEFAULT_PORTS[scheme] else f"{host}:{port}"
    return urlunsplit((scheme, netloc, parts.path or "/", "", ""))


def _refuse(reason: str, description: str, error: str = INVALID_DPOP_PROOF, nonce: str | None = None) -> DPoPError:
    log.info("identity.dpop.refused.%s", reason)
    return DPoPError(error, description, reason=reason, nonce=nonce)


class DPoPVerifier:
    """RFC 9449 §4.3 proof checks, with single use of each (jkt, jti) through the cache."""

    def __init__(
        self,
        cache: Cache,
        *,
        max_age: int = 60,
        leeway: int = 5,
        now: Callable[[], float] = time.time,
        algorithms: tuple[str, ...] = DPOP_ALGORITHMS,
    ) -> None:
        if not algorithms or any(a not in _KEY_TYPES for a in algorithms):
            raise ValueError("DPoP proofs use the asymmetric algorithms of DPOP_ALGORITHMS only")
        self._cache = cache
        self._max_age = max_age
        self._leeway = leeway
        self._now = now
        self._algorithms = frozenset(algorithms)
        self._registry = _ProofRegistry(algorithms=list(algorithms))
        self._keys: dict[str, _Known] = {}  # protected header segment -> its key, jwk, jkt and alg
        self._htus: dict[str, str | None] = {}
        self._aths: dict[str, str] = {}  # access token -> its ath

    @property
    def algorithms(self) -> tuple[str, ...]:
        return tuple(a for a in DPOP_ALGORITHMS if a in self._algorithms)

    def verify(self, proof: str, *, htm: str, htu: str, access_token: str | None = None,
               claim: bool = True) -> DPoPProof:
        """Check ``proof`` for a request ``htm htu``; with ``access_token`` (at a resource server)
        its ``ath`` must be present and match. Raises DPoPError; returns the verified proof.
        ``claim=False``: every check but the single use, which the caller makes before it trusts the
        proof (``claim``, with the proof's ``unclaimed``), off the event loop (it waits for Redis)."""
        self._check_shape(proof)
        segment, body, signature = proof.split(".")
        # A client signs every proof with one key, so its protected header is the same each time. A
        # header met before (byte for byte the same segment) passed every header guard then (typ, alg,
        # jwk), and its key was imported and its thumbprint taken: a later proof under it has its
        # payload decoded and its signature checked with that key and alg, without joserfc parsing
        # and checking the same header again. The signature is checked on every proof. Bounded:
        # cleared when full, as the token verifier's memo.
        known = self._keys.get(segment)
        if known is None:
            header, payload, obj = self._parse(proof)
            key, public_jwk = self._key(header)
            # RFC 9449 §4.3 item 7: the signature verifies with the key in the jwk header.
            try:
                valid = jws.validate_compact(obj, key, registry=self._registry)
            except (JoseError, ValueError) as exc:
                raise _refuse("signature", "the proof's signature does not verify with its jwk") from exc
            if not valid:
                raise _refuse("signature", "the proof's signature does not verify with its jwk")
            known = _Known(key, public_jwk, jwk_thumbprint(public_jwk), self._registry.get_alg(header["alg"]))
            if not _EXTENDED.intersection(header):  # b64/crit change how a proof is read: never remembered
                if len(self._keys) >= _MEMO_MAX:
                    self._keys.clear()
                self._keys[segment] = known
        else:
            payload = self._signed(known, segment, body, signature)
        key, public_jwk, jkt = known.key, known.jwk, known.jkt
        claims = self._claims(payload)
        jti = self._check_jti(claims)
        self._check_htm(claims, htm)
        claimed_htu = self._check_htu(claims, htu)
        iat = self._check_iat(claims)
        ath = self._check_ath(claims, access_token)
        nonce = self._check_nonce(claims)
        # RFC 9449 §11.1: a proof is single use. One atomic SET NX per (key, jti), kept for the whole
        # acceptance window (iat up to leeway ahead, accepted until max_age after iat), STYLE.md #4.
        # The earliest it could have been accepted: when the server's clock read iat - leeway (a
        # client's clock ahead by the leeway). Before the cache's epoch, its claim may have been lost.
        digest = hashlib.sha256(jti.encode("utf-8")).hexdigest()
        single_use = SingleUse(f"dpop:jti:{jkt}:{digest}", self._max_age + 2 * self._leeway, iat - self._leeway, nonce)
        if claim:
            self.claim(single_use)
        return DPoPProof(jkt=jkt, jti=jti, htm=claims["htm"], htu=claimed_htu, iat=int(iat), ath=ath,
                         jwk=dict(public_jwk), unclaimed=None if claim else single_use)

    def _signed(self, known: _Known, segment: str, body: str, signature: str) -> bytes:
        """The payload of a proof under a header already checked, its signature verified with that
        header's key (RFC 9449 §4.3 item 7), as joserfc's ``validate_compact`` does: the same size caps,
        the same strict base64url, the algorithm's own ``verify``."""
        registry = self._registry
        if len(body) > registry.max_payload_length or len(signature) > registry.max_signature_length:
            raise _refuse("malformed", "the proof is not a compact JWS")
        try:
            payload = urlsafe_b64decode(body.encode("ascii"))
        except (ValueError, UnicodeError) as exc:
            raise _refuse("malformed", "the proof is not a compact JWS") from exc
        try:
            valid = known.alg.verify(f"{segment}.{body}".encode("ascii"), urlsafe_b64decode(signature.encode("ascii")),
                                     known.key)
        except (JoseError, ValueError, UnicodeError) as exc:
            raise _refuse("signature", "the proof's signature does not verify with its jwk") from exc
        if not valid:
            raise _refuse("signature", "the proof's signature does not verify with its jwk")
        return payload

    def claim(self, single_use: SingleUse) -> None:
        """The proof's one use (a verified proof's ``unclaimed``); DPoPError when it was used before, or
        could have been before the cache's dataset began (its claim lost with the data: ``refused``)."""
        got = self._cache.claim(single_use.key, single_use.ttl, usable_from=single_use.usable_from,
                                nonce=single_use.nonce)
        if not got:
            raise self.refused(got)

    def claim_call(self, single_use: SingleUse) -> tuple[list[str], list[Any]] | None:
        """The keys and arguments of the script ``claim`` runs for ``single_use`` (quaygate/dataset.py
        ``CLAIM``), for a caller that runs it on a connection of its own greeting as the cache's do
        (the gate's, pipelined on the event loop: no worker thread waits for Redis); None when the
        cache is not Redis. The caller raises ``replayed()`` when the claim is refused."""
        claim_call = getattr(self._cache, "claim_call", None)
        if not self._cache.shared or claim_call is None:
            return None
        call: tuple[list[str], list[Any]] = claim_call(single_use.key, single_use.ttl,
                                                       usable_from=single_use.usable_from, nonce=single_use.nonce)
        return call

    @staticmethod
    def refused(got: Claim) -> DPoPError:
        """The refusal of a claim that failed: the proof used before, or, when the claim gives the epoch's
        nonce, a proof that may have been made before the cache's dataset began (RFC 9449 §8, §9: a new
        proof with that nonce is accepted)."""
        if got.nonce is None:
            return DPoPVerifier.replayed()
        return _refuse("nonce", "make a new proof with the nonce in the DPoP-Nonce header", USE_DPOP_NONCE,
                       nonce=got.nonce)

    @staticmethod
    def replayed() -> DPoPError:
        return _refuse("replayed", "the proof has been used before (jti)")

    # -- the guards, in RFC 9449 §4.3 order --------------------------------------------------------

    @staticmethod
    def _check_shape(proof: str) -> None:
        # §4.3 item 2: exactly one well-formed JWT, in the compact serialization.
        if not isinstance(proof, str) or not proof:
            raise _refuse("missing", "a DPoP proof is required")
        if len(proof) > MAX_PROOF_LENGTH:
            raise _refuse("too_large", "the proof is too large")
        if proof.count(".") != 2 or any(not part for part in proof.split(".")):
            raise _refuse("malformed", "the proof is not a compact JWS")

    def _parse(self, proof: str) -> tuple[dict[str, Any], bytes, Any]:
        try:
            obj = jws.extract_compact(proof.encode("ascii"), registry=self._registry)
            header = obj.headers()
        except (JoseError, ValueError, UnicodeError) as exc:
            raise _refuse("malformed", "the proof is not a compact JWS") from exc
        if not isinstance(header, dict):
            raise _refuse("malformed", "the proof's header is not a JSON object")
        # §4.3 item 4: typ is dpop+jwt (explicit typing, RFC 8725 §3.11: no other JWT passes as one).
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() != DPOP_TYP:
            raise _refuse("typ", "the proof's typ is not dpop+jwt")
        # §4.3 item 5: an asymmetric algorithm we support; never none, never HMAC.
        if header.get("alg") not in self._algorithms:
            raise _refuse("alg", "the proof's alg is not allowed")
        return header, obj.payload, obj

    def _key(self, header: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        # §4.3 item 6: the jwk header is a public key (no private members) fit for alg.
        jwk = header.get("jwk")
        if not isinstance(jwk, dict):
            raise _refuse("jwk_missing", "the proof has no jwk header")
        if _PRIVATE_MEMBERS & jwk.keys():
            raise _refuse("jwk_private", "the proof's jwk contains private key material")
        key_class, kty, crv = _KEY_TYPES[header["alg"]]
        if jwk.get("kty") != kty or (crv is not None and jwk.get("crv") != crv):
            raise _refuse("jwk_type", "the proof's jwk does not fit its alg")
        public = {k: v for k, v in jwk.items() if k in _THUMBPRINT_MEMBERS[kty]}
        if kty == "RSA":  # the key's size and exponent set what checking its signature costs us
            why = rsa_keys.rsa_key_refusal(public.get("n"), public.get("e"))
            if why is not None:
                raise _refuse(*_RSA_REFUSALS[why])
        try:
            key = key_class.import_key(public)
        except (JoseError, ValueError, TypeError) as exc:
            raise _refuse("jwk_invalid", "the proof's jwk is not a valid public key") from exc
        return key, public

    @staticmethod
    def _claims(payload: bytes) -> dict[str, Any]:
        try:
            claims = json.loads(payload)
        except ValueError as exc:
            raise _refuse("claims", "the proof's claims are not JSON") from exc
        if not isinstance(claims, dict):
            raise _refuse("claims", "the proof's claims are not a JSON object")
        return claims

    @staticmethod
    def _check_jti(claims: dict[str, Any]) -> str:
        jti = claims.get("jti")
        # Printable: a lone surrogate cannot be hashed into its replay key, a control character is noise.
        if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI_LENGTH or not jti.isprintable():
            raise _refuse("jti", "the proof's jti is missing or malformed")
        return jti

    @staticmethod
    def _check_htm(claims: dict[str, Any], htm: str) -> None:
        # §4.3 item 8: htm matches the request method (case-sensitive, RFC 9110 §9.1).
        if claims.get("htm") != htm:
            raise _refuse("htm", "the proof's htm does not match the request method")

    def _check_htu(self, claims: dict[str, Any], htu: str) -> str:
        # §4.3 item 9: htu matches the request URI, ignoring query and fragment, after syntax- and
        # scheme-based normalisation (RFC 3986 §6.2.2, §6.2.3).
        claimed = claims.get("htu")
        expected = self._normalised(htu)
        if expected is None:
            raise ValueError(f"the server's own request URI is not an absolute http(s) URI: {htu!r}")
        if not isinstance(claimed, str) or self._normalised(claimed) != expected:
            raise _refuse("htu", "the proof's htu does not match the request URI")
        return claimed

    def _normalised(self, uri: str) -> str | None:
        """``normalise_htu``, remembered: a gate names the same few URIs in every proof."""
        try:
            return self._htus[uri]
        except KeyError:
            pass
        if len(self._htus) >= _MEMO_MAX:
            self._htus.clear()
        normal = self._htus[uri] = normalise_htu(uri)
        return normal

    def _check_iat(self, claims: dict[str, Any]) -> float:
        # §4.3 item 11 and §11.1: created recently (max_age), and not in the future beyond the leeway.
        iat = claims.get("iat")
        # Python's JSON reads NaN and Infinity: a NaN passes every comparison below.
        if isinstance(iat, bool) or not isinstance(iat, int | float) or not math.isfinite(iat):
            raise _refuse("iat", "the proof's iat is missing")
        now = self._now()
        if iat > now + self._leeway:
            raise _refuse("iat_future", "the proof's iat is in the future")
        if iat < now - self._max_age:
            raise _refuse("iat_stale", "the proof is too old (iat)")
        return float(iat)

    @staticmethod
    def _check_nonce(claims: dict[str, Any]) -> str | None:
        # §4.2: nonce, a server-provided value (§8, §9), NQCHAR only. One this server gave vouches that the
        # proof was made since the cache's epoch (``claim``); any other is judged by iat alone.
        nonce = claims.get("nonce")
        if nonce is None:
            return None
        if not isinstance(nonce, str) or not 0 < len(nonce) <= MAX_NONCE_LENGTH or not _NQCHARS.issuperset(nonce):
            raise _refuse("nonce_malformed", "the proof's nonce is malformed")
        return nonce

    def _check_ath(self, claims: dict[str, Any], access_token: str | None) -> str | None:
        # §4.3 item 12 and §7.1: with an access token, ath is required and is the token's hash.
        ath = claims.get("ath")
        if access_token is None:
            return ath if isinstance(ath, str) else None
        if not isinstance(ath, str) or not ath:
            raise _refuse("ath_missing", "the proof has no ath for the access token")
        expected = self._aths.get(access_token)
        if expected is None:  # a client sends the same token for minutes: its hash remembered, bounded
            try:
                expected = access_token_hash(access_token)
            except UnicodeEncodeError as exc:
                raise _refuse("ath", "the proof's ath does not match the access token") from exc
            if len(self._aths) >= _MEMO_MAX:
                self._aths.clear()
            self._aths[access_token] = expected
        if not ath.isascii() or not hmac.compare_digest(ath.encode("ascii"), expected.encode("ascii")):
            raise _refuse("ath", "the proof's ath does not match the access token")
        return ath


def proof_header(headers: Any) -> str | None:
    """The request's one DPoP header (RFC 9449 §4.3 item 1: not more than one). Raises DPoPError when
    there are several; None when there is none. ``headers`` is a Starlette Headers object."""
    values = headers.getlist("dpop")
    if len(values) > 1:
        raise _refuse("several", "more than one DPoP header")
    return values[0] if values else None


def dpop_verifier_for(app: Any) -> DPoPVerifier:
    """The app's DPoPVerifier: the identity provider's one instance (its cache, so replicas share the
    jti claims through Redis; its clock; ``settings.dpop_max_age``)."""
    from .bootstrap import provider_for

    verifier: DPoPVerifier = provider_for(app).dpop
    return verifier
