"""The composition root's wiring: what the lifespan builds once and every part borrows."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from . import solo
from .cache import Cache, make_cache
from .crypto import DataCipher
from .db import make_engine
from .settings import Settings


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


@dataclass
class Container:
    settings: Settings
    engine: sa.Engine
    cache: Cache
    cipher: DataCipher
    clock: SystemClock
    gate_facts: Any = None  # issue 5: release_service.adapters.gate_facts.RedisGateFacts, with Redis
    face_matcher: Any = None  # issue 6: release_service.ports.FaceMatcher over identity's face service (app.py)
    _owned: bool = field(default=False, init=False, repr=False)  # ``own_cache`` done

    @classmethod
    def build(cls, settings: Settings) -> Container:
        """What a process needs, server or CLI. With Redis, every commit that changes what a gate decision
        reads (a right, a badge, a ban, a policy) invalidates the gates' copies, whichever process made it.
        Without Redis, refused (``solo.NeedsRedis``) on a database servers with Redis serve: its changes
        would reach none of their copies (quaygate/solo.py, review 169 finding 1)."""
        engine = make_engine(settings.database_url, pool_size=settings.db_pool_size,
                             max_overflow=settings.db_max_overflow)
        if not settings.redis_url:
            try:
                solo.refuse_without_redis(engine)
            except BaseException:
                engine.dispose()
                raise
        built = cls(
            settings=settings,
            engine=engine,
            cache=make_cache(settings.redis_url),
            cipher=settings.data_cipher(),
            clock=SystemClock(),
        )
        # What the database holds opens under a previous data key only until rekey-data has finished
        # (quaygate.crypto ``open_stored``: review 140, finding 1).
        from .rekey import watch

        watch(built.cipher, built.engine)
        if settings.redis_url:
            built.own_cache()
            from .workers import gate_facts_for  # the release service's adapters, only where Redis is

            built.gate_facts = gate_facts_for(built)
        return built

    def own_cache(self) -> None:
        """A cache in Redis claims its Redis database for this database's dataset (quaygate/
        identity_of_dataset.py): every connection to one that serves another is refused. Read once; an
        in-process cache has nothing to claim."""
        own = getattr(self.cache, "own", None)
        if own is not None and not getattr(self, "_owned", False):
            from .identity_of_dataset import dataset_id

            own(dataset_id(self.engine))
            self._owned = True

    def close(self) -> None:
        if self.gate_facts is not None:
            self.gate_facts.close()  # the invalidations Redis has not taken yet are tried once more
        self.cache.close()
        self.engine.dispose()
