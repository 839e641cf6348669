"""The shared database (Postgres) of a many-replica deployment: one engine per process, the
schema migrated at start-up under an advisory lock (two replicas starting together migrate once),
and the one translation of "the database did not answer" into the caller's 503.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, exc, text
from sqlalchemy.engine import make_url
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_fixed

from server import errors

log = logging.getLogger("fhe_server.database")

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
MIGRATION_LOCK = 0x46484521
"""The advisory lock every replica takes before migrating (any constant shared by all)."""
STORE_LOCK = 0x4648454B
"""The advisory lock held while the key store's bound and quotas are checked and keys written."""
JOB_LOCK = 0x4648454A
"""The advisory lock held while a job's admission limits are checked and its row written."""
UNREACHABLE = (exc.OperationalError, exc.InterfaceError, exc.TimeoutError)
"""What SQLAlchemy raises when the database cannot be reached or dropped the connection."""
RETRY_AFTER_SECONDS = "5"

P = ParamSpec("P")
T = TypeVar("T")


def engine_for(url: str, pool_size: int = 10) -> Engine:
    """An engine on `url` (postgresql://... uses psycopg 3): connections checked before use,
    short connect and pool timeouts so an unreachable database fails requests fast."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return create_engine(
        parsed,
        pool_pre_ping=True,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=5,
        pool_recycle=1800,
        connect_args={"connect_timeout": 3},
    )


def unavailable() -> errors.StateUnavailable:
    """503 state_unavailable with Retry-After: the request changed nothing, try it again."""
    return errors.StateUnavailable(
        "the server's shared database did not answer; nothing was changed, try again shortly",
        headers={"Retry-After": RETRY_AFTER_SECONDS},
    )


def shared_state(function: Callable[P, T]) -> Callable[P, T]:
    """Decorate a store method: an unreachable database becomes `unavailable()`."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return function(*args, **kwargs)
        except UNREACHABLE as error:
            log.warning("database unreachable in %s: %s", function.__name__, error)
            raise unavailable() from None

    return wrapper


@retry(
    retry=retry_if_exception_type(UNREACHABLE),
    stop=stop_after_delay(60),
    wait=wait_fixed(1),
    reraise=True,
)
def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision, holding the migration lock in the migration's own
    transaction; waits up to a minute for a database that is still starting."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    log.info("database schema at the newest revision")
