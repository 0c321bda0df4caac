"""Error codes of the release engine. They carry no HTTP status: each edge maps them (STYLE.md #6)."""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    # input
    CONTAINER_NUMBER_MALFORMED = "container_number_malformed"
    CONTAINER_CHECK_DIGIT = "container_check_digit"
    INVALID_VALIDITY_WINDOW = "invalid_validity_window"
    INVALID_PLATE = "invalid_plate"
    INVALID_SLOT = "invalid_slot"
    BATCH_TOO_LARGE = "batch_too_large"
    BATCH_EMPTY = "batch_empty"
    INVALID_LIGHT = "invalid_light"
    INVALID_CURSOR = "invalid_cursor"
    INVALID_WEBHOOK_SUBSCRIPTION = "invalid_webhook_subscription"
    TOO_MANY_SUBSCRIPTIONS = "too_many_subscriptions"  # an organisation's active webhook subscriptions
    INVALID_TEXT = "invalid_text"  # a control character, or too long for its column once normalised
    INVALID_OBSERVED_AT = "invalid_observed_at"  # gate verify: a read observed too long ago, or ahead of us
    # parties and permissions
    UNKNOWN_ORGANISATION = "unknown_organisation"
    ORGANISATION_INACTIVE = "organisation_inactive"  # deactivated by port security (issue 4)
    UNKNOWN_PERSON = "unknown_person"
    UNKNOWN_BADGE = "unknown_badge"
    # the truck register (quaygate.schema ``trucks``) gives the plate to another transport operator
    TRUCK_OF_ANOTHER_OPERATOR = "truck_of_another_operator"
    WRONG_ORGANISATION_KIND = "wrong_organisation_kind"
    NOT_ISSUER = "not_issuer"
    NOT_HOLDER = "not_holder"
    NOT_RECIPIENT = "not_recipient"
    NOT_SENDER = "not_sender"
    NOT_LIGHT_OWNER = "not_light_owner"
    LIGHT_HELD_BY_ANOTHER = "light_held_by_another"  # customs' hold, set by another customs organisation
    NOT_TERMINAL = "not_terminal"
    FORBIDDEN = "forbidden"
    # state
    NOT_FOUND = "not_found"
    ACTIVE_RIGHT_EXISTS = "active_right_exists"
    ILLEGAL_TRANSITION = "illegal_transition"
    RIGHT_EXPIRED = "right_expired"
    RIGHT_NOT_YET_VALID = "right_not_yet_valid"
    RIGHT_BLOCKED = "right_blocked"
    TRANSFER_PENDING = "transfer_pending"
    TRANSFER_NOT_PENDING = "transfer_not_pending"
    SELF_TRANSFER = "self_transfer"
    DRIVER_SCREENING_FAILED = "driver_screening_failed"
    ALREADY_USED = "already_used"
    IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused"
    REQUEST_ID_REUSED = "request_id_reused"  # gate verify: one request_id, one request
    REASON_REQUIRED = "reason_required"
    # HTTP preconditions (RFC 9110 §13.1.1): a write conditioned on a version of the right (If-Match)
    INVALID_IF_MATCH = "invalid_if_match"
    PRECONDITION_FAILED = "precondition_failed"


class DomainError(Exception):
    """A refused action: a machine code and a message safe to show the caller."""

    def __init__(self, code: ErrorCode, message: str, **context: object) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.context = context
        # What the use case recorded before it refused stands (its transaction commits, the refusal is
        # still answered): a refusal that must leave a trace, as an issue refused over another line's
        # right (services/issue.py). Only services.common.run honours it.
        self.keep_effects = False
