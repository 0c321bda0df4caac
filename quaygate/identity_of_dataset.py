"""The dataset a database holds, by its id: what one Redis database serves (quaygate/dataset.py).

What quaygate keeps in Redis is named by terminal, badge, container, token and request id, not by
database. Two deployments given one Redis database would answer each other's gates from each other's
copies (a badge number held by another person there: ``driver_mismatch``; a right of the other port).
So each database names its dataset, a random id made on its first read and kept in ``dataset_identity``
(one row, migration 0032), and every Redis connection's greeting claims the Redis database for that id
(``OWNER_KEY``) or is refused (``dataset.ForeignRedis``). A database copied whole (a restore, a replica
promoted) keeps its id: it is the same dataset, and the epoch and generations take care of what its
Redis may have lost (quaygate/dataset.py).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import sqlalchemy as sa

from .dataset import OWNER_KEY
from .schema import dataset_identity

__all__ = ["OWNER_KEY", "dataset_id"]


def dataset_id(engine: sa.Engine) -> str:
    """The database's dataset id, made and kept on the first read (two processes racing to make it: the
    primary key keeps one, and both read it)."""
    with engine.connect() as conn:
        found = conn.execute(sa.select(dataset_identity.c.id)).scalar()
    if found is not None:
        return str(found)
    try:
        with engine.begin() as conn:
            conn.execute(dataset_identity.insert().values(singleton=1, id=str(uuid.uuid4()),
                                                          created_at=datetime.now(UTC)))
    except sa.exc.IntegrityError:
        pass  # another process made it first
    with engine.connect() as conn:
        return str(conn.execute(sa.select(dataset_identity.c.id)).scalar_one())
