"""The ``quaygate`` command line: serve, migrate, demo, audit, keys, and the admin tasks.

Errors are plain messages on stderr with a non-zero exit, never a traceback for bad input.
"""

from __future__ import annotations

import argparse
import functools
import ipaddress
import logging
import sys
import uuid
from collections.abc import Callable, Sequence

from pydantic import ValidationError

from .settings import Mode, Settings, trusted_proxies


def _settings() -> Settings:
    return Settings()


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the app under uvicorn.

    The client address every part sees (the per-address rate limits and login lockouts, identity/
    ratelimit.py) is the peer's own, except on a request from a proxy named by
    QUAYGATE_FORWARDED_ALLOW_IPS or ``--forwarded-allow-ips`` (quaygate.settings.trusted_proxies): then
    the X-Forwarded-For address that proxy vouches for. Both uvicorn options are given explicitly: its
    own default believes the headers from 127.0.0.1 (or from FORWARDED_ALLOW_IPS in the environment),
    so any process on this host could choose its address, while a proxy on another host would count
    every client as its own one address.

    HTTP is uvicorn's httptools protocol with a deadline for each request's head (quaygate.serving,
    QUAYGATE_HEADER_SECONDS): a connection that has not sent a whole head within it, from its opening or
    its last response, is closed."""
    import uvicorn

    from .observability import configure_logging, log_event

    settings = _settings()
    refused = _dev_bind_refused(settings, args.host, insecure=args.insecure_dev_bind)
    if refused:
        print(refused, file=sys.stderr)
        return 2
    if args.workers < 1:
        print("--workers is at least 1", file=sys.stderr)
        return 2
    proxies = settings.forwarded_allow_ips
    if args.forwarded_allow_ips is not None:
        try:
            proxies = trusted_proxies(args.forwarded_allow_ips)
        except ValueError as exc:
            print(f"--forwarded-allow-ips: {exc}", file=sys.stderr)
            return 2
    if args.workers > 1 and not settings.redis_url:
        # Each worker would keep its own in-process cache: a single-use DPoP proof, client assertion,
        # passkey challenge or gate request_id claimed in one worker could be replayed to another, and a
        # token revoked through one worker would still pass in the others.
        print("--workers above 1 needs QUAYGATE_REDIS_URL: without Redis every worker keeps its own "
              "single-use claims and revocations, so a replay sent to another worker would pass. "
              "Serve one worker, or set QUAYGATE_REDIS_URL.", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    log_event(logging.getLogger("quaygate"), "quaygate.serve.proxies.trusted" if proxies
              else "quaygate.serve.proxies.none", proxies=list(proxies))
    if args.migrate:
        cmd_migrate(args)
    # uvicorn's httptools protocol with a deadline for each request's head (QUAYGATE_HEADER_SECONDS,
    # quaygate/serving.py; review 168, finding 1): uvicorn has none of its own.
    from .serving import HeadDeadlineProtocol

    uvicorn.run("quaygate.app:app_from_env", factory=True, host=args.host, port=args.port, workers=args.workers,
                access_log=False, log_config=None, proxy_headers=bool(proxies),
                forwarded_allow_ips=_with_mapped(proxies),
                http=functools.partial(HeadDeadlineProtocol, head_seconds=settings.header_seconds))
    return 0


def _dev_bind_refused(settings: Settings, host: str, *, insecure: bool) -> str | None:
    """Review 132, finding 2: dev and demo mode are for one machine (secrets in var/, demo credentials,
    webhooks to localhost in dev), so they serve this host's loopback only unless told otherwise."""
    if settings.mode is Mode.PRODUCTION or insecure or _loopback(host):
        return None
    return (f"--host {host}: QUAYGATE_MODE is {settings.mode.value}, not for serving others (its secrets are "
            "made per directory, demo credentials are on disk). Serve 127.0.0.1, set QUAYGATE_MODE=production, "
            "or pass --insecure-dev-bind to serve it to the network anyway")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _with_mapped(proxies: Sequence[str]) -> list[str]:
    """The proxies as uvicorn matches peers against them: an IPv4 entry also in its IPv4-mapped IPv6
    form (RFC 4291 §2.5.5.2), as a peer is seen on a dual-stack socket (``--host :: --workers 2``)."""
    out: list[str] = []
    for proxy in proxies:
        network = ipaddress.ip_network(proxy)
        out.append(proxy)
        if network.version == 4:
            out.append(f"::ffff:{network.network_address}/{96 + network.prefixlen}")
    return out


def cmd_migrate(args: argparse.Namespace) -> int:
    from .migrate import upgrade

    settings = _settings()
    if settings.is_sqlite:
        settings.var_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.database_url)
    print(f"database migrated to the latest schema ({settings.database_url.split('@')[-1]})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .container import Container
    from .demo import seed, seeded, write_credentials

    settings = _settings()
    # Review 132, finding 1: the demo makes an admin client, a port security officer with a 30-day
    # enrolment code and a gate client, and writes their credentials to disk: never in production, and on
    # a database other than a local SQLite file only when asked for in so many words.
    if settings.mode is Mode.PRODUCTION:
        print("quaygate demo seeds demo clients, an officer's enrolment code and their credentials: refused in "
              "production mode (QUAYGATE_MODE=production); nothing was written", file=sys.stderr)
        return 2
    if not settings.is_sqlite and not args.force_demo:
        print("quaygate demo seeds demo clients and credentials into a database that is not SQLite: if this is "
              "truly a demo database, pass --force-demo; nothing was written", file=sys.stderr)
        return 2
    path = settings.var_dir / "demo-credentials.json"
    container = Container.build(settings)
    try:
        if seeded(container.engine) and path.exists():
            print(f"demo data already present; credentials in {path}")
            return 0
        if seeded(container.engine):
            print(f"demo data is present but {path} is gone: delete the database to seed again", file=sys.stderr)
            return 1
        from identity.bootstrap import key_store

        from .rekey import ForeignDataKey

        try:
            key_store(container).ensure_active(container.clock.now())
        except ForeignDataKey as exc:  # review 172, finding 2
            print(f"quaygate demo: refused, nothing was written: {exc}", file=sys.stderr)
            return 1
        data = seed(container.engine, settings, container.clock.now())
        write_credentials(path, data)
    finally:
        container.close()
    print("=" * 72)
    print("DEMO MODE: demo organisations, drivers, clients and release rights were created.")
    print(f"Demo credentials: {path}")
    print("=" * 72)
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from . import audit_cli

    settings = _settings()
    if args.audit_cmd == "verify":
        return audit_cli.cmd_verify(settings, args.public_key, args.checkpoints or ())
    if args.audit_cmd == "seal":
        return audit_cli.cmd_seal(settings)
    if args.audit_cmd == "rotate-key":
        from identity.audit import actor_fields

        from .terminal_cli import _actor

        return audit_cli.cmd_rotate_key(settings, actor_fields(_actor()))
    return audit_cli.cmd_export_key(settings)


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    from identity.bootstrap import key_store
    from identity.keys import SIGNING_ALGORITHMS

    from .container import Container
    from .rekey import ForeignDataKey

    if args.encryption:
        return _rotate_encryption_key()
    unknown = [a for a in args.alg or () if a not in SIGNING_ALGORITHMS]
    if unknown:
        print(f"unknown algorithm {unknown[0]!r}: one of {', '.join(SIGNING_ALGORITHMS)}", file=sys.stderr)
        return 2
    settings = _settings()
    container = Container.build(settings)
    try:
        kids = key_store(container).rotate(container.clock.now(), args.alg)
    except ForeignDataKey as exc:  # review 172, finding 2: the new keys would be sealed where nobody opens them
        print(f"keys rotate: refused, nothing changed: {exc}", file=sys.stderr)
        return 1
    finally:
        container.close()
    for alg, kid in kids.items():
        print(f"new {alg} signing key {kid} is active")
    print("older keys stay published until their tokens expire")
    return 0


def _rotate_encryption_key() -> int:
    from identity.broker.service import encryption_keys

    from .container import Container
    from .rekey import ForeignDataKey

    container = Container.build(_settings())
    try:
        keys = encryption_keys(container)
        now = container.clock.now()
        keys.ensure_active(now)
        kid = keys.rotate(now)
        overlap = keys.overlap
    except ForeignDataKey as exc:  # review 172, findings 2 and 3: sealed where nobody opens it, it is not ours
        print(f"keys rotate --encryption: refused, nothing changed: {exc}", file=sys.stderr)
        return 1
    finally:
        container.close()
    print(f"new upstream encryption key {kid} is active")
    print(f"the previous key stays published and decrypts for {int(overlap.total_seconds())} s "
          "(until the upstreams' cached copies of our JWKS have expired)")
    return 0


# Who the trail names for what an operator does at this command line (as identity.iat.created's entries).
CLI_ACTOR = {"client_id": "cli"}


def cmd_org_create(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    import sqlalchemy as sa

    from identity import audit
    from identity.domain.bans import TERMINAL_CODE_FORM, is_terminal_code
    from release_service.domain.parties import OrgKind

    from .container import Container
    from .schema import organisations

    try:
        kind = OrgKind(args.kind)
    except ValueError:
        print(f"unknown kind {args.kind!r}: one of {', '.join(k.value for k in OrgKind)}", file=sys.stderr)
        return 2
    if not (args.eori or args.vat):
        print("an organisation is identified by --eori and/or --vat", file=sys.stderr)
        return 2
    if kind is OrgKind.TERMINAL and not args.terminal_code:
        print(f"a terminal organisation needs --terminal-code: {TERMINAL_CODE_FORM}", file=sys.stderr)
        return 2
    if args.terminal_code is not None and not is_terminal_code(args.terminal_code):
        # Review 123, finding 1: port-limited bans are screened by the port a terminal's code starts with.
        print(f"--terminal-code {args.terminal_code!r}: a terminal code is {TERMINAL_CODE_FORM}", file=sys.stderr)
        return 2
    container = Container.build(_settings())
    org_id = uuid.uuid4()
    try:
        now = datetime.now(UTC)
        with container.engine.begin() as conn:
            conn.execute(organisations.insert().values(
                id=org_id, name=args.name, kind=kind.value, eori=args.eori, vat=args.vat,
                terminal_code=args.terminal_code, created_at=now))
            # On the trail as the admin API's creation is (review 176, finding 1), the operator as ``cli``.
            audit.record("identity.admin.organisation.created", at=now, actor=CLI_ACTOR, subject=str(org_id),
                         conn=conn, data={"kind": kind.value})
    except sa.exc.IntegrityError:
        print("an organisation with that EORI, VAT number or terminal code already exists", file=sys.stderr)
        return 1
    finally:
        container.close()
    print(org_id)
    return 0


def cmd_org_status(args: argparse.Namespace) -> int:
    """Deactivate or reactivate an organisation (identity.organisations): who is ``cli``, why is --reason."""
    from datetime import UTC, datetime

    from identity.bootstrap import grant_store
    from identity.clients import ClientRegistry
    from identity.organisations import OrganisationRefused, set_active

    from .container import Container

    try:
        org_id = uuid.UUID(args.organisation)
    except ValueError:
        print("ORGANISATION is an organisation id (a UUID)", file=sys.stderr)
        return 2
    settings = _settings()
    container = Container.build(settings)
    try:
        grants = grant_store(container)
        done = set_active(container.engine, grants, org_id, active=args.org_cmd == "reactivate", actor="cli",
                          reason=args.reason, now=datetime.now(UTC), access_token_ttl=settings.access_token_ttl,
                          on_change=ClientRegistry(container.engine, container.cache).changed)
    except OrganisationRefused as exc:
        print(f"cannot {args.org_cmd} the organisation: {exc.message}", file=sys.stderr)
        return 1 if exc.code in ("not_found", "status_unchanged") else 2
    finally:
        container.close()
    print(f"organisation {org_id} {'reactivated' if done.active else 'deactivated'}; clients: "
          f"{', '.join(done.clients) or 'none'}" + ("" if done.active else f"; grants revoked: {done.grants_revoked}"))
    return 0


def cmd_client_create(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from identity.bootstrap import create_client

    from .container import Container

    container = Container.build(_settings())
    try:
        client_id, secret = create_client(
            container.engine, name=args.name, role=args.role,
            organisation_id=uuid.UUID(args.organisation) if args.organisation else None,
            terminal_code=args.terminal_code, now=datetime.now(UTC))
    except ValueError as exc:
        print(f"cannot create the client: {exc}", file=sys.stderr)
        return 2
    finally:
        container.close()
    print(f"client_id={client_id}")
    if secret:
        print(f"client_secret={secret}   (shown once: store it now)")
    return 0


def cmd_client_rotate_secret(args: argparse.Namespace) -> int:
    """A new secret for a client that has one, printed once (identity.registration ``rotate_secret``):
    the old one is refused from then on; a client registered through RFC 7591 gets a new registration
    access token too, printed once. Who is ``cli``; a refusal (no such client, no secret to rotate)
    changes nothing and exits 2."""
    from datetime import UTC, datetime

    from identity.bootstrap import grant_store
    from identity.clients import ClientRegistry
    from identity.registration import ClientManagement, RegistrationError

    from .container import Container

    settings = _settings()
    container = Container.build(settings)
    try:
        manager = ClientManagement(container.engine, grant_store(container), issuer=settings.issuer,
                                   access_token_ttl=settings.access_token_ttl,
                                   on_change=ClientRegistry(container.engine, container.cache).changed)
        rotated = manager.rotate_secret(args.client_id, admin="cli", revoke_tokens=args.revoke_tokens,
                                        now=datetime.now(UTC))
    except RegistrationError as exc:
        print(f"cannot rotate the secret: {exc.description}", file=sys.stderr)
        return 2
    finally:
        container.close()
    print(f"client_id={args.client_id}")
    print(f"client_secret={rotated.client_secret}   (shown once: store it now)")
    if rotated.registration_access_token is not None:
        print(f"registration_access_token={rotated.registration_access_token}   (shown once; the old one is refused: "
              f"hand it to the client's owner with the secret, for {rotated.registration_client_uri})")
    print("the old secret is refused from now on; its tokens were revoked, and the first new one comes a few "
          "seconds from now (until then the token endpoint answers 429 slow_down with Retry-After)"
          if args.revoke_tokens else
          "the old secret is refused from now on; tokens issued before stay valid until they expire")
    return 0


def cmd_iat_create(args: argparse.Namespace) -> int:
    """An initial access token for RFC 7591 dynamic client registration, printed once."""
    from datetime import UTC, datetime

    from identity.bootstrap import grant_store
    from identity.registration import ClientManagement, RegistrationError

    from .container import Container

    try:
        org = uuid.UUID(args.org) if args.org else None
    except ValueError:
        print("--org is an organisation id (a UUID)", file=sys.stderr)
        return 2
    settings = _settings()
    container = Container.build(settings)
    try:
        grants = grant_store(container)
        manager = ClientManagement(container.engine, grants, issuer=settings.issuer)
        token, expires_at = manager.create_initial_access_token(
            organisation_id=org, created_by="cli", ttl=args.ttl, now=datetime.now(UTC))
    except RegistrationError as exc:
        print(f"cannot create the token: {exc.description}", file=sys.stderr)
        return 2
    finally:
        container.close()
    print(f"initial_access_token={token}   (single use, expires {expires_at.isoformat()}; shown once)")
    return 0


def cmd_person_enrol_code(args: argparse.Namespace) -> int:
    """A one-time enrolment code for a person's first passkey, for anyone, an officer too: the operator
    is refused no role, as port security is."""
    from datetime import UTC, datetime, timedelta

    from identity import audit
    from identity.authn.enrolment import NO_ROLE_REFUSED, EnrolmentRefused, issue_code

    from .container import Container

    try:
        person = uuid.UUID(args.person_id)
    except ValueError:
        print("PERSON_ID is a person id (a UUID)", file=sys.stderr)
        return 2
    container = Container.build(_settings())
    try:
        # An operator with the database's keys is refused no role: the code may be for an officer, and
        # counts as port security's (privileged_issuer; identity.authn.enrolment NO_ROLE_REFUSED). On the
        # trail with it, as the console's issue is (review 176, finding 1: an officer's code left no trace).
        now = datetime.now(UTC)
        with container.engine.begin() as conn:
            code, expires_at = issue_code(container.engine, person, created_by="cli", now=now,
                                          ttl=timedelta(hours=args.hours), refused_roles=NO_ROLE_REFUSED, conn=conn)
            audit.record("identity.enrolment_code.issued", at=now, actor=CLI_ACTOR, subject=str(person),
                         data={"expires_at": expires_at.isoformat()}, conn=conn)
    except OverflowError:  # --hours past what a timedelta holds, before the TTL rule could refuse it
        print("cannot issue a code: --hours is out of range", file=sys.stderr)
        return 2
    except (EnrolmentRefused, ValueError) as exc:  # unknown or suspended person; a TTL out of range
        print(f"cannot issue a code: {exc}", file=sys.stderr)
        return 2
    finally:
        container.close()
    print(f"enrolment_code={code}   (single use, expires {expires_at.isoformat()}; give it to the person only)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="quaygate", description="Identity-bound container release service.")
    sub = p.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve the API (identity, release, gate)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--migrate", action="store_true", help="migrate the database first")
    serve.add_argument("--forwarded-allow-ips", metavar="ADDRESSES",
                       help="the reverse proxies whose X-Forwarded-For/-Proto are believed: IP addresses and "
                            "CIDR networks, comma-separated; '' for none (default QUAYGATE_FORWARDED_ALLOW_IPS, "
                            "else none: the peer's address is the client's)")
    serve.add_argument("--insecure-dev-bind", action="store_true",
                       help="in dev or demo mode, serve a --host other than loopback (refused without it)")
    serve.set_defaults(func=cmd_serve)

    sub.add_parser("migrate", help="bring the database schema up to date").set_defaults(func=cmd_migrate)
    demo = sub.add_parser("demo", help="seed demo data and write var/demo-credentials.json (not in production)")
    demo.add_argument("--force-demo", action="store_true",
                      help="seed a database other than SQLite (a PostgreSQL demo database); never in production")
    demo.set_defaults(func=cmd_demo)

    audit = sub.add_parser("audit", help="the tamper-evident audit trail")
    audit_sub = audit.add_subparsers(dest="audit_cmd", required=True)
    verify = audit_sub.add_parser("verify", help="check the whole chain and its signed checkpoints")
    verify.add_argument("--public-key", help="a JWK file with the audit public key (else the one in the database)")
    verify.add_argument("--checkpoints", action="append", metavar="FILE",
                        help="a witness file of signed checkpoints (QUAYGATE_AUDIT_WITNESS): each must be in the "
                             "trail as signed; repeat for one per replica")
    audit_sub.add_parser("seal", help="chain and sign the entries written since the last seal")
    audit_sub.add_parser("export-key", help="print the audit public keys (JWKS) for an authority")
    audit_sub.add_parser("rotate-key", help="hand the trail over to a new audit key (the old one signs nothing "
                         "more); see README, Rotating the audit key")
    audit.set_defaults(func=cmd_audit)

    keys = sub.add_parser("keys", help="token signing keys")
    keys_sub = keys.add_subparsers(dest="keys_cmd", required=True)
    rotate = keys_sub.add_parser("rotate", help="add new signing keys and start signing with them")
    rotate.add_argument("--alg", action="append", metavar="RS256|PS256|ES256",
                        help="rotate this algorithm's key only (repeatable; default: every algorithm)")
    rotate.add_argument("--encryption", action="store_true",
                        help="rotate the RSA key upstream providers (itsme) encrypt id tokens and userinfo to, "
                             "instead of the signing keys")
    rotate.set_defaults(func=cmd_keys_rotate)
    from .keys_cli import register as register_key_commands  # review 132: quaygate keys revoke KID --reason

    register_key_commands(keys_sub)

    org = sub.add_parser("org", help="organisations")
    org_sub = org.add_subparsers(dest="org_cmd", required=True)
    org_create = org_sub.add_parser("create", help="register an organisation")
    org_create.add_argument("--name", required=True)
    org_create.add_argument("--kind", required=True)
    org_create.add_argument("--eori")
    org_create.add_argument("--vat")
    org_create.add_argument("--terminal-code", help="a terminal's code: its port's UN/LOCODE, a hyphen and its "
                            "own code, e.g. BEANR-K1700")
    org_create.set_defaults(func=cmd_org_create)
    for verb, text in (("deactivate", "no tokens for its clients, no new rights, transfers or nominations"),
                       ("reactivate", "lift a deactivation")):
        org_status = org_sub.add_parser(verb, help=text)
        org_status.add_argument("organisation", metavar="ORGANISATION", help="the organisation id")
        org_status.add_argument("--reason", required=True, help="why (kept on the audit trail)")
        org_status.set_defaults(func=cmd_org_status)

    client = sub.add_parser("client", help="OAuth clients")
    client_sub = client.add_subparsers(dest="client_cmd", required=True)
    client_create = client_sub.add_parser("create", help="register a confidential client")
    client_create.add_argument("--name", required=True)
    client_create.add_argument("--role", required=True)
    client_create.add_argument("--organisation")
    client_create.add_argument("--terminal-code")
    client_create.set_defaults(func=cmd_client_create)
    client_rotate = client_sub.add_parser("rotate-secret", help="give a client a new secret (the old one is refused)")
    client_rotate.add_argument("client_id", metavar="CLIENT_ID")
    client_rotate.add_argument("--revoke-tokens", action="store_true",
                               help="also revoke the client's grants and the access tokens issued to it "
                                    "(its first new token comes a few seconds later)")
    client_rotate.set_defaults(func=cmd_client_rotate_secret)

    iat = sub.add_parser("iat", help="initial access tokens for dynamic client registration (RFC 7591)")
    iat_sub = iat.add_subparsers(dest="iat_cmd", required=True)
    iat_create = iat_sub.add_parser("create", help="create a single-use initial access token")
    iat_create.add_argument("--org", help="the organisation the registered client will act for")
    iat_create.add_argument("--ttl", type=int, help="seconds until it expires (default one day)")
    iat_create.set_defaults(func=cmd_iat_create)

    person = sub.add_parser("person", help="persons")
    person_sub = person.add_subparsers(dest="person_cmd", required=True)
    enrol = person_sub.add_parser("enrol-code", help="a one-time code to register a first passkey at /enrol")
    enrol.add_argument("person_id")
    enrol.add_argument("--hours", type=int, default=72, help="hours until it expires (default 72)")
    enrol.set_defaults(func=cmd_person_enrol_code)

    from .badge_cli import register as register_badge_commands  # issue 4: quaygate badge ...

    register_badge_commands(sub)

    from .bans_cli import add_commands as register_ban_commands  # issue 4: quaygate bans load, person set-national-id

    register_ban_commands(sub, person_sub)

    from .terminal_cli import register as register_terminal_commands  # issue 5: quaygate terminal policy ...

    register_terminal_commands(sub)

    from .truck_cli import register as register_truck_commands  # review 170: quaygate truck register ...

    register_truck_commands(sub)

    facts = sub.add_parser("gate-facts", help="the gates' copies of rights, badges, bans and policies in Redis")
    facts_sub = facts.add_subparsers(dest="facts_cmd", required=True)
    facts_sub.add_parser("refresh", help="make every gate read its facts again from the database"
                         ).set_defaults(func=cmd_gate_facts_refresh)

    redis = sub.add_parser("redis", help="whether the database is served with Redis")
    redis_sub = redis.add_subparsers(dest="redis_cmd", required=True)
    redis_sub.add_parser("release", help="its servers no longer use Redis: processes without QUAYGATE_REDIS_URL "
                         "may open it again (refused while a server serves it)").set_defaults(func=cmd_redis_release)

    # Issue 5: its options (--config, --check) are the adapter's own; main() hands them over unparsed.
    sub.add_parser("gate-adapter", help="run a terminal's gate adapter: gate-adapter --config lane.toml",
                   add_help=False)
    return p


def cmd_gate_facts_refresh(args: argparse.Namespace) -> int:
    """Issue 5: every copy the gates keep in Redis is read again from the database before it is trusted
    (a change whose invalidation was lost, a database restored under a running Redis)."""
    from .container import Container

    settings = _settings()
    if not settings.redis_url:
        print("no QUAYGATE_REDIS_URL: without Redis the gates keep no copies; nothing to refresh", file=sys.stderr)
        return 2
    container = Container.build(settings)
    try:
        container.gate_facts.bump_everything()
    finally:
        container.close()
    if container.gate_facts.owed():
        return 1  # main() says why
    print("every gate reads its facts again from the database")
    return 0


def cmd_redis_release(args: argparse.Namespace) -> int:
    """Review 169, finding 1: once a server with Redis has served the database, every process without
    QUAYGATE_REDIS_URL refuses to open it (quaygate/solo.py ``served_with_redis``). For a database whose
    servers truly no longer use Redis: cleared, only while no server serves it. Not through Container.build,
    which would refuse."""
    from . import solo
    from .db import make_engine

    engine = make_engine(_settings().database_url, pool_size=1, max_overflow=0)
    try:
        since = solo.release_redis(engine)
    except solo.AnotherServer:
        print("redis release: a quaygate server serves this database: stop every server of it first; nothing "
              "changed", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    if since is None:
        print("the database was not served with Redis: nothing to release")
    else:
        print(f"the database is no longer served with Redis (since {since:%Y-%m-%d %H:%M} UTC): processes "
              "without QUAYGATE_REDIS_URL open it again; a server with Redis started later marks it again")
    return 0


def cmd_gate_adapter(argv: list[str]) -> int:
    """Issue 5: the adapter process; its own options (``--config``, ``--check``), see gate_adapters/adapter.py."""
    from gate_adapters.adapter import main as adapter_main

    return adapter_main(argv)


def main(argv: Sequence[str] | None = None) -> int:
    given = list(sys.argv[1:] if argv is None else argv)
    if given[:1] == ["gate-adapter"]:
        return cmd_gate_adapter(given[1:])
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    before = _undelivered()
    try:
        code = func(args)
    except ValidationError as exc:  # settings refused: what and why, never the input (a secret, perhaps)
        for error in exc.errors(include_url=False, include_input=False, include_context=False):
            field = "QUAYGATE_" + str(error["loc"][0]).upper() + ": " if error["loc"] else ""
            print(f"quaygate: {field}{error['msg'].removeprefix('Value error, ')}", file=sys.stderr)
        return 2
    except ValueError as exc:  # refused otherwise
        print(f"quaygate: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        if not _unopened(exc):
            raise
        return 2
    return _said_undelivered(code, _undelivered() - before)


def _unopened(exc: BaseException) -> bool:
    """The database could not be opened or did not answer (a port nobody listens on, a URL that is none, a
    SQLite file in a folder that does not exist): said in one line, naming the setting, never the URL (its
    password); True when said. Review 176, finding 2: every database command printed a 41-frame traceback."""
    import os

    import sqlalchemy as sa

    if isinstance(exc, sa.exc.DBAPIError | sa.exc.ArgumentError):
        cause: BaseException = exc.orig if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None else exc
    elif type(exc).__module__.split(".")[0] == "psycopg" and type(exc).__name__ == "OperationalError":
        cause = exc  # raw psycopg, from a command that connects without SQLAlchemy (the serving lease)
    else:
        return False
    said = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    url = os.environ.get("QUAYGATE_DATABASE_URL", "")
    if url:
        said = said.replace(url, "<the URL>")
    print(f"quaygate: cannot open the database (QUAYGATE_DATABASE_URL): {said}", file=sys.stderr)
    return True


def _undelivered() -> int:
    facts = sys.modules.get("release_service.adapters.gate_facts")  # loaded only where Redis is
    return facts.undelivered() if facts is not None else 0


def _said_undelivered(code: int, lost: int) -> int:
    """A change committed here whose invalidation Redis did not take. The servers pass it on from
    PostgreSQL within about a second when they reach Redis (``gate_fact_changes``, review 169 finding 2);
    until one does, the gates may decide on their old copy of it. Say so, and how to end it now; the
    command did not fully succeed."""
    if not lost:
        return code
    print("quaygate: the change is saved, but Redis did not take the news of it: the running servers pass it "
          "on to the gates within about a second if they reach Redis; until one does, the gates may decide on "
          "their old copy (at most QUAYGATE_GATE_FACTS_TTL). Once Redis answers, `quaygate gate-facts refresh` "
          "makes sure of it.", file=sys.stderr)
    return code or 1


if __name__ == "__main__":
    sys.exit(main())
