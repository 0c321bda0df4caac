"""Client registration: RFC 7591 dynamic registration, RFC 7592 management, the admin's registrations."""

from .endpoint import management_for, registration_admit, registration_endpoint
from .service import REGISTRATION_PATH, ClientManagement, RegistrationError

__all__ = ["REGISTRATION_PATH", "ClientManagement", "RegistrationError", "management_for", "registration_admit",
           "registration_endpoint"]
