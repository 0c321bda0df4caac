"""The badge register (issue 4): Alfapass and Port Pass badges, their history and activations.

Rules live in identity.domain.badges (pure); store.py reads and writes rows; service.py holds the
use cases (one transaction each) and ``deactivate_for_ban`` for the port-ban register. The admin
API is identity/api/badges.py, the command line quaygate/badge_cli.py.

Wiring: the API builds ``BadgeService(engine, app.state.ban_screening)``; until something sets
``app.state.ban_screening`` (the port-ban register's ``BanScreening`` adapter), ``NoBanRegister``
screens everyone ``clear``.

Note on nomination (issue 2) and activation per facility: the nomination screening
(release_service/adapters/sqla/directory.py ``BadgeScreening``) does not refuse a badge that is not
activated at the nomination's terminal. It would be cheap (the terminal is passed in), but it is not
clearly right: a terminal's security desk usually activates a badge when the driver first shows up,
so refusing at nomination would block every first pickup at a new terminal. The gate decision
(issue 5, reason ``badge_not_activated_here``) is where the check belongs; ``BadgeStore.activated_at``
answers it.
"""
