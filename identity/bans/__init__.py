"""The port-ban register: a signed national feed loaded into ``port_bans`` and screened (issue 4).

- ``feed``: the JWS signature check (joserfc, explicit algorithm allowlist) and the register key.
- ``loader``: one atomic, idempotent load (CLI ``quaygate bans load``, the puller), and what a new ban
  does at once: badges deactivated, open nominations alerted.
- ``pull``: the periodic pull from ``QUAYGATE_BAN_FEED_URL`` (off by default).
- ``screening``: the ``identity.domain.screening.BanScreening`` adapter over the stored list.

The feed format and rules: identity/domain/bans.py and docs/port-ban-feed.md.
"""
