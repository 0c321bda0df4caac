"""Show and change a terminal's gate policy (issue 5; SPEC.md "Each terminal has a policy").

Who may call this is decided at the edge (the admin API: port security; the CLI: the operator). Rules:
1. The fields are ``TerminalPolicy``'s own (``dataclasses.fields``): a field added to the domain is
   shown and settable here without being listed twice. An unknown field is refused, nothing changed.
2. A change names only the fields it changes; the others keep their current value (never a silent
   reset to a default: leaving out ``face_required`` must not switch face checks off).
3. A value must have its default's JSON type (``true`` is not a number, ``"0.5"`` is not a number),
   then ``TerminalPolicy.__post_init__`` validates it: one set of rules, the domain's.
4. Lost updates: the terminal's policy is locked for the transaction (``TerminalRegistry.lock_policy``)
   before it is read; a caller may also send the ``etag`` it saw (HTTP If-Match): a policy changed
   meanwhile is refused (``policy_changed``), nothing changed.
5. A change is written with who and when (``set_policy``, which also tells every cache, see
   ``quaygate.invalidation``) and audited with the old and the new policy in the same transaction,
   then committed once. A change that changes nothing writes nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal, Protocol, get_args, get_origin, get_type_hints

from release_service.domain.gate import TerminalPolicy
from release_service.ports import AuditLog

log = logging.getLogger(__name__)

FIELDS: tuple[dataclasses.Field[Any], ...] = dataclasses.fields(TerminalPolicy)
FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in FIELDS)
DEFAULTS: Mapping[str, Any] = {f.name: f.default for f in FIELDS}
# The values a field of a few named values may take (``screening_unavailable``, ``face_match_results``),
# from the domain's own ``Literal`` types: for the API's schema; the domain checks them itself.
CHOICES: Mapping[str, tuple[str, ...]] = {
    name: get_args(hint) for name, hint in get_type_hints(TerminalPolicy).items() if get_origin(hint) is Literal}


class PolicyRefused(Exception):
    """``code``: unknown_terminal, unknown_policy_field, invalid_policy, policy_changed."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code, self.detail = code, detail


class PolicyStore(Protocol):
    def policy(self, terminal: str) -> TerminalPolicy: ...

    def set_policy(self, terminal: str, policy: TerminalPolicy, *, by: str, now: datetime) -> None: ...


class TerminalRegistry(Protocol):
    def exists(self, terminal: str) -> bool: ...

    def lock_policy(self, terminal: str) -> None: ...

    def updated(self, terminal: str) -> tuple[str, datetime] | None: ...


class PolicyUnitOfWork(Protocol):
    gate: Any  # PolicyStore (SqlGateStore); Any: the uow's attribute is typed by its own class
    audit: AuditLog

    def commit(self) -> None: ...


@dataclasses.dataclass(frozen=True, slots=True)
class PolicyView:
    terminal: str
    policy: TerminalPolicy
    updated_by: str | None
    updated_at: datetime | None

    @property
    def etag(self) -> str:
        return etag(self.policy)

    def as_json(self) -> dict[str, Any]:
        return {"terminal": self.terminal, "policy": as_dict(self.policy), "defaults": not self.updated_by,
                "updated_by": self.updated_by,
                "updated_at": None if self.updated_at is None else self.updated_at.isoformat(), "etag": self.etag}


def as_dict(policy: TerminalPolicy) -> dict[str, Any]:
    """Rule 1: every field of the dataclass, in its order."""
    return {name: getattr(policy, name) for name in FIELD_NAMES}


def etag(policy: TerminalPolicy) -> str:
    canonical = json.dumps(as_dict(policy), sort_keys=True, separators=(",", ":"))
    return '"' + hashlib.sha256(canonical.encode()).hexdigest()[:32] + '"'


def _check_type(name: str, value: Any) -> None:
    """Rule 3: a JSON value of the default's type (an int is a number; a bool is not)."""
    default = DEFAULTS[name]
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, str):
        ok = isinstance(value, str)
    else:  # a field of another kind: the domain's own validation is the only check
        ok = True
    if not ok:
        raise PolicyRefused("invalid_policy", f"{name} must be {_kind(default)}")


def _kind(default: Any) -> str:
    if isinstance(default, bool):
        return "true or false"
    if isinstance(default, int | float):
        return "a number"
    return "a string"


def changed(current: TerminalPolicy, changes: Mapping[str, Any]) -> TerminalPolicy:
    """Rules 1 to 3: ``current`` with ``changes`` applied and validated, or PolicyRefused."""
    if not isinstance(changes, Mapping):
        raise PolicyRefused("invalid_policy", "the policy is an object of fields")
    unknown = sorted(str(k) for k in changes if k not in DEFAULTS)
    if unknown:
        raise PolicyRefused("unknown_policy_field",
                            f"unknown policy field {', '.join(unknown)}; known: {', '.join(FIELD_NAMES)}")
    for name, value in changes.items():
        _check_type(name, value)
    values = {k: (float(v) if isinstance(DEFAULTS[k], float) else v) for k, v in changes.items()}
    try:
        return dataclasses.replace(current, **values)
    except (ValueError, TypeError) as exc:
        raise PolicyRefused("invalid_policy", str(exc)) from exc


def show(gate: PolicyStore, terminals: TerminalRegistry, terminal: str) -> PolicyView:
    if not terminals.exists(terminal):
        raise PolicyRefused("unknown_terminal", f"no terminal {terminal!r}")
    updated = terminals.updated(terminal)
    return PolicyView(terminal, gate.policy(terminal), *(updated or (None, None)))


def change(uow: PolicyUnitOfWork, terminals: TerminalRegistry, terminal: str, changes: Mapping[str, Any], *,
           actor: dict[str, Any], by: str, now: datetime, if_match: str | None = None
           ) -> tuple[PolicyView, PolicyView, list[str]]:
    """Rules 1 to 5: returns the policy before, after, and the names of the fields that changed."""
    if not terminals.exists(terminal):
        raise PolicyRefused("unknown_terminal", f"no terminal {terminal!r}")
    terminals.lock_policy(terminal)  # rule 4: before the read
    before = show(uow.gate, terminals, terminal)
    if if_match is not None and if_match.strip() not in (before.etag, "*"):
        raise PolicyRefused("policy_changed", "the policy was changed since it was read; read it again")
    new = changed(before.policy, changes)
    names = [n for n in FIELD_NAMES if getattr(new, n) != getattr(before.policy, n)]
    if not names:
        return before, before, []
    uow.gate.set_policy(terminal, new, by=by, now=now)
    uow.audit.append("release.gate_policy.changed", actor=actor, subject=f"terminal:{terminal}",
                     data={"terminal": terminal, "changed": names, "old": as_dict(before.policy),
                           "new": as_dict(new)}, at=now)
    uow.commit()
    log.info("release.gate_policy.changed", extra={"terminal": terminal, "changed": names})
    return before, PolicyView(terminal, new, by, now), names
