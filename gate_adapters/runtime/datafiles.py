"""The adapter's own SQLite files (the outbox, the pass store): made its owner's alone, and refused when they
are not.

Whoever may write the outbox can forget the rights this adapter used online (offline mode would let a second
truck in on one of them), queue requests to be sent at the next start, or clear a lane's latch; whoever may
write the pass store can take its passes away (every offline truck reviewed). So these files are kept as the
key files are (keys.py ``read_private_file``):

- ``private_data_file`` makes an absent file empty (SQLite takes an empty file as a new database) with mode
  0600, before SQLite opens it: SQLite itself would make it 0644 less the umask. SQLite gives the WAL and
  shared-memory files (``-wal``, ``-shm``) the database file's mode and owner.
- It then checks the file, its ``-wal`` and ``-shm`` when they are there, and the folder they are in (whoever
  may write the folder can put another file in their place): one that group or others may write, or that
  belongs to another user than the adapter's (or root), is refused outside dev (``DataFileExposed``, a
  ValueError naming the file, what is wrong and the fix), and the adapter does not start; in dev it is a
  warning (``gate.adapter.data_file_exposed``). A file that group or others may read is a warning at each
  start (``gate.adapter.data_file_readable``), not a refusal: the outbox holds badge numbers and face
  captures, but a backup or monitoring group may be meant to read it; nobody but the adapter may write it.
- ``check_data_file`` is the same check without making anything (``--check``: a file not there yet is fine).
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from .keys import foreign_owner

log = logging.getLogger("gate_adapters.datafiles")

WRITE_BITS = 0o022  # group or others may write it
READ_BITS = 0o044
COMPANIONS = ("-wal", "-shm", "-journal")  # SQLite's files beside a database (WAL mode: -wal and -shm)


class DataFileExposed(ValueError):
    """An outbox or pass store that group or others may write, or another user owns (outside dev: the adapter
    does not start)."""


def private_data_file(path: Path, *, strict: bool, risk: str) -> None:
    """Make ``path`` (mode 0600) when absent, then check it, its SQLite companions and its folder (module
    docstring). ``risk``: what whoever may write the file could do, for the message."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        pass
    else:
        os.close(fd)
    check_data_file(path, strict=strict, risk=risk)


def check_data_file(path: Path, *, strict: bool, risk: str) -> None:
    """The check of ``private_data_file`` alone; a file (or folder) not there yet is not checked."""
    me = os.geteuid()
    problems: list[str] = []
    folder = path.parent.resolve()
    for p, is_folder in [(folder, True), (path, False), *((Path(f"{path}{c}"), False) for c in COMPANIONS)]:
        try:
            st = os.stat(p)
        except FileNotFoundError:
            continue
        mode = stat.S_IMODE(st.st_mode)
        fix = f"chmod go-w {p}" if is_folder else f"chmod 600 {p}"
        what = "folder" if is_folder else "file"
        if mode & WRITE_BITS:
            problems.append(f"{p} may be written by group or others (mode {mode:04o}): {risk}; make it its owner's "
                            f"alone: {fix}")
        if st.st_uid not in (me, 0):
            problems.append(foreign_owner(p, st.st_uid, me, f"rewrite this {what} or let anyone write it"))
        if not is_folder and mode & READ_BITS and not mode & WRITE_BITS:
            log.warning("gate.adapter.data_file_readable: %s may be read by group or others (mode %04o): it holds "
                        "what the lanes read (badge numbers, face captures) or the passes; chmod 600 %s unless "
                        "that is meant", p, mode, p)
    for message in problems:
        if strict:
            raise DataFileExposed(message)
        log.warning("gate.adapter.data_file_exposed: %s (allowed with dev = true only)", message)
