"""The client styles of the transaction exploration: how users write each step.

Every style opens a fresh source for one run (so the protocol messages of a
run are the same every time) and writes the steps of a transaction shape the
way that client's users do: ``session.add`` for the ORM, ``Model.objects``
for Django, ``conn.begin_nested()`` / ``conn.transaction()`` / ``atomic()``
for savepoints, parameters in each driver's own style. Steps (``insert``,
``bump``, ``notify``, ``savepoint_rolled_back``, ``savepoint_released``,
``count``, ``doom``) take ``(tx, run, *args)``: `tx` is what
``Guard.transaction`` handed to fn.

Tables (`SCHEMA`): ``explore_items`` has no UNIQUE constraint on (run, tag),
so a write applied twice shows; ``explore_child`` references an empty
``explore_parent`` with a deferred key, so ``doom`` fails at COMMIT.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import outlast

CHANNEL = "explore"
SCHEMA = (
    "CREATE TABLE explore_items (id bigserial PRIMARY KEY, run text NOT NULL,"
    " tag text NOT NULL, n int NOT NULL DEFAULT 0)",
    "CREATE TABLE explore_parent (id int PRIMARY KEY)",
    "CREATE TABLE explore_child (id bigserial PRIMARY KEY, run text NOT NULL,"
    " parent int NOT NULL REFERENCES explore_parent (id) DEFERRABLE INITIALLY DEFERRED)",
)


@dataclass(frozen=True)
class Target:
    """Where a style connects: the proxy in front of the exploration's database."""

    host: str
    port: int
    dbname: str
    user: str = "postgres"

    def dsn(self) -> str:
        return f"host={self.host} port={self.port} dbname={self.dbname} user={self.user}"

    def url(self, driver: str) -> str:
        return f"postgresql+{driver}://{self.user}@{self.host}:{self.port}/{self.dbname}"


Closer = Callable[[], Any]

# --------------------------------------------------------------------------- SQLAlchemy


def _tables() -> Any:
    import sqlalchemy as sa

    meta = sa.MetaData()
    items = sa.Table(
        "explore_items",
        meta,
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("run", sa.Text, nullable=False),
        sa.Column("tag", sa.Text, nullable=False),
        sa.Column("n", sa.Integer, nullable=False),
    )
    children = sa.Table(
        "explore_child",
        meta,
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("run", sa.Text, nullable=False),
        sa.Column("parent", sa.Integer, nullable=False),
    )
    return items, children


class Core:
    """SQLAlchemy Core on outlast's hardened engine (its error hook reports to the Guard)."""

    name = "sqlalchemy_core"
    asynchronous = False

    def __init__(self) -> None:
        self.items, self.children = _tables()

    def open(self, target: Target, guard: outlast.Guard) -> tuple[Any, Closer]:
        from outlast.sqlalchemy import create_engine

        engine = create_engine(target.url("psycopg"), guard=guard, pool_size=1, max_overflow=2)
        return engine, engine.dispose

    def insert(self, conn: Any, run: str, tag: str) -> None:
        conn.execute(self.items.insert().values(run=run, tag=tag, n=0))

    def bump(self, conn: Any, run: str, tag: str) -> None:
        items = self.items
        where = (items.c.run == run) & (items.c.tag == tag)
        conn.execute(items.update().where(where).values(n=items.c.n + 1))

    def notify(self, conn: Any, run: str) -> None:
        import sqlalchemy as sa

        conn.execute(sa.select(sa.func.pg_notify(CHANNEL, run)))

    def savepoint_rolled_back(self, conn: Any, run: str, tag: str) -> None:
        savepoint = conn.begin_nested()
        self.insert(conn, run, tag)
        savepoint.rollback()

    def savepoint_released(self, conn: Any, run: str, tag: str) -> None:
        with conn.begin_nested():
            self.insert(conn, run, tag)

    def count(self, conn: Any, run: str, which: str) -> int:
        import sqlalchemy as sa

        query = sa.select(sa.func.count()).select_from(self.items)
        return int(conn.execute(query.where(self.items.c.run == which)).scalar_one())

    def doom(self, conn: Any, run: str) -> None:
        conn.execute(self.children.insert().values(run=run, parent=-1))


class _Base(DeclarativeBase):
    pass


class _Item(_Base):
    __tablename__ = "explore_items"
    id: Mapped[int] = mapped_column(primary_key=True)
    run: Mapped[str]
    tag: Mapped[str]
    n: Mapped[int]


class _Child(_Base):
    __tablename__ = "explore_child"
    id: Mapped[int] = mapped_column(primary_key=True)
    run: Mapped[str]
    parent: Mapped[int]


_ITEM, _CHILD = _Item, _Child


class Orm:
    """An ORM ``sessionmaker`` on a plain engine, as in the FastAPI tutorial."""

    asynchronous = False

    def __init__(self, *, autoflush: bool, driver: str) -> None:
        self.autoflush = autoflush
        self.driver = driver
        self.name = f"orm_autoflush_{'on' if autoflush else 'off'}"

    def open(self, target: Target, guard: outlast.Guard) -> tuple[Any, Closer]:
        import sqlalchemy as sa
        from sqlalchemy.orm import sessionmaker

        engine = sa.create_engine(target.url(self.driver), pool_size=1, max_overflow=2)
        factory = sessionmaker(engine, autoflush=self.autoflush, expire_on_commit=False)
        return factory, engine.dispose

    def insert(self, session: Any, run: str, tag: str) -> None:
        item = _ITEM(run=run, tag=tag, n=0)
        session.add(item)
        session.info.setdefault("explore", {})[tag] = item

    def bump(self, session: Any, run: str, tag: str) -> None:
        session.info["explore"][tag].n += 1  # the object the session holds

    def notify(self, session: Any, run: str) -> None:
        import sqlalchemy as sa

        session.execute(sa.text("SELECT pg_notify(:c, :p)"), {"c": CHANNEL, "p": run})

    def savepoint_rolled_back(self, session: Any, run: str, tag: str) -> None:
        savepoint = session.begin_nested()
        session.add(_ITEM(run=run, tag=tag, n=0))
        session.flush()  # the INSERT is sent, then rolled back with the savepoint
        savepoint.rollback()

    def savepoint_released(self, session: Any, run: str, tag: str) -> None:
        with session.begin_nested():
            session.add(_ITEM(run=run, tag=tag, n=0))

    def count(self, session: Any, run: str, which: str) -> int:
        import sqlalchemy as sa

        query = sa.select(sa.func.count()).select_from(_ITEM).where(_ITEM.run == which)
        return int(session.scalar(query))

    def doom(self, session: Any, run: str) -> None:
        session.add(_CHILD(run=run, parent=-1))


class AsyncOrm:
    """An ``async_sessionmaker``: plain asyncpg engine, or outlast's hardened psycopg one."""

    asynchronous = True

    def __init__(self, driver: str) -> None:
        self.driver = driver
        self.name = f"async_session_{driver}"

    async def open(self, target: Target, guard: outlast.Guard) -> tuple[Any, Closer]:
        from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

        if self.driver == "asyncpg":
            engine = create_async_engine(target.url("asyncpg"), pool_size=1, max_overflow=2)
        else:
            from outlast.sqlalchemy import create_async_engine as hardened

            engine = hardened(target.url("psycopg"), guard=guard, pool_size=1, max_overflow=2)
        return async_sessionmaker(engine, expire_on_commit=False), engine.dispose

    async def insert(self, session: Any, run: str, tag: str) -> None:
        item = _ITEM(run=run, tag=tag, n=0)
        session.add(item)
        session.info.setdefault("explore", {})[tag] = item

    async def bump(self, session: Any, run: str, tag: str) -> None:
        session.info["explore"][tag].n += 1

    async def notify(self, session: Any, run: str) -> None:
        import sqlalchemy as sa

        await session.execute(sa.text("SELECT pg_notify(:c, :p)"), {"c": CHANNEL, "p": run})

    async def savepoint_rolled_back(self, session: Any, run: str, tag: str) -> None:
        savepoint = await session.begin_nested()
        session.add(_ITEM(run=run, tag=tag, n=0))
        await session.flush()
        await savepoint.rollback()

    async def savepoint_released(self, session: Any, run: str, tag: str) -> None:
        async with session.begin_nested():
            session.add(_ITEM(run=run, tag=tag, n=0))

    async def count(self, session: Any, run: str, which: str) -> int:
        import sqlalchemy as sa

        query = sa.select(sa.func.count()).select_from(_ITEM).where(_ITEM.run == which)
        return int(await session.scalar(query))

    async def doom(self, session: Any, run: str) -> None:
        session.add(_CHILD(run=run, parent=-1))


# --------------------------------------------------------------------------- drivers

_INSERT = "INSERT INTO explore_items (run, tag) VALUES (%s, %s)"
_BUMP = "UPDATE explore_items SET n = n + 1 WHERE run = %s AND tag = %s"
_NOTIFY = "SELECT pg_notify(%s, %s)"
_COUNT = "SELECT count(*) FROM explore_items WHERE run = %s"
_DOOM = "INSERT INTO explore_child (run, parent) VALUES (%s, -1)"


class PsycopgPool:
    """A plain ``psycopg_pool.ConnectionPool`` (psycopg 3: parameters go in Parse/Bind)."""

    name = "psycopg_pool"
    asynchronous = False

    def open(self, target: Target, guard: outlast.Guard) -> tuple[Any, Closer]:
        from psycopg_pool import ConnectionPool

        pool: Any = ConnectionPool(target.dsn(), min_size=1, max_size=2, open=True)
        pool.wait(10)
        return pool, pool.close

    def insert(self, conn: Any, run: str, tag: str) -> None:
        conn.execute(_INSERT, (run, tag))

    def bump(self, conn: Any, run: str, tag: str) -> None:
        conn.execute(_BUMP, (run, tag))

    def notify(self, conn: Any, run: str) -> None:
        conn.execute(_NOTIFY, (CHANNEL, run))

    def savepoint_rolled_back(self, conn: Any, run: str, tag: str) -> None:
        with conn.transaction(force_rollback=True):
            conn.execute(_INSERT, (run, tag))

    def savepoint_released(self, conn: Any, run: str, tag: str) -> None:
        with conn.transaction():
            conn.execute(_INSERT, (run, tag))

    def count(self, conn: Any, run: str, which: str) -> int:
        return int(conn.execute(_COUNT, (which,)).fetchone()[0])

    def doom(self, conn: Any, run: str) -> None:
        conn.execute(_DOOM, (run,))


class Psycopg2Pool:
    """outlast's hardened psycopg2 pool (parameters interpolated: simple queries)."""

    name = "psycopg2_pool"
    asynchronous = False

    def open(self, target: Target, guard: outlast.Guard) -> tuple[Any, Closer]:
        from outlast.psycopg2 import ConnectionPool

        pool = ConnectionPool(target.dsn(), guard=guard, min_size=1, max_size=2)
        return pool, pool.close

    @staticmethod
    def _run(conn: Any, sql: str, params: tuple[Any, ...] = ()) -> Any:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchone() if cur.description is not None else None

    def insert(self, conn: Any, run: str, tag: str) -> None:
        self._run(conn, _INSERT, (run, tag))

    def bump(self, conn: Any, run: str, tag: str) -> None:
        self._run(conn, _BUMP, (run, tag))

    def notify(self, conn: Any, run: str) -> None:
        self._run(conn, _NOTIFY, (CHANNEL, run))

    def savepoint_rolled_back(self, conn: Any, run: str, tag: str) -> None:
        self._run(conn, "SAVEPOINT explore_b")
        self._run(conn, _INSERT, (run, tag))
        self._run(conn, "ROLLBACK TO SAVEPOINT explore_b")

    def savepoint_released(self, conn: Any, run: str, tag: str) -> None:
        self._run(conn, "SAVEPOINT explore_c")
        self._run(conn, _INSERT, (run, tag))
        self._run(conn, "RELEASE SAVEPOINT explore_c")

    def count(self, conn: Any, run: str, which: str) -> int:
        return int(self._run(conn, _COUNT, (which,))[0])

    def doom(self, conn: Any, run: str) -> None:
        self._run(conn, _DOOM, (run,))


def _dollars(sql: str) -> str:
    """``%s`` placeholders as asyncpg's ``$1``, ``$2``..."""
    parts = sql.split("%s")
    return "".join(p + (f"${i + 1}" if i < len(parts) - 1 else "") for i, p in enumerate(parts))


class AsyncpgPool:
    """outlast's hardened asyncpg pool (prepared statements: Parse/Describe, then Bind/Execute)."""

    name = "asyncpg_pool"
    asynchronous = True

    async def open(self, target: Target, guard: outlast.Guard) -> tuple[Any, Closer]:
        from outlast.asyncpg import create_pool

        pool = await create_pool(
            host=target.host,
            port=target.port,
            user=target.user,
            database=target.dbname,
            guard=guard,
            min_size=1,
            max_size=2,
        )
        return pool, pool.close

    async def insert(self, conn: Any, run: str, tag: str) -> None:
        await conn.execute(_dollars(_INSERT), run, tag)

    async def bump(self, conn: Any, run: str, tag: str) -> None:
        await conn.execute(_dollars(_BUMP), run, tag)

    async def notify(self, conn: Any, run: str) -> None:
        await conn.execute(_dollars(_NOTIFY), CHANNEL, run)

    async def savepoint_rolled_back(self, conn: Any, run: str, tag: str) -> None:
        savepoint = conn.transaction()
        await savepoint.start()
        await conn.execute(_dollars(_INSERT), run, tag)
        await savepoint.rollback()

    async def savepoint_released(self, conn: Any, run: str, tag: str) -> None:
        async with conn.transaction():
            await conn.execute(_dollars(_INSERT), run, tag)

    async def count(self, conn: Any, run: str, which: str) -> int:
        return int(await conn.fetchval(_dollars(_COUNT), which))

    async def doom(self, conn: Any, run: str) -> None:
        await conn.execute(_dollars(_DOOM), run)


class Django:
    """The Django ORM: ``Guard.transaction(connection, fn)``; needs `setup_django` first."""

    name = "django_orm"
    asynchronous = False

    def __init__(self) -> None:
        self.item: Any = None
        self.child: Any = None

    def open(self, target: Target, guard: outlast.Guard) -> tuple[Any, Closer]:
        from django.db import connection

        connection.close()  # the run starts on a new connection
        return connection, connection.close

    def insert(self, conn: Any, run: str, tag: str) -> None:
        self.item.objects.create(run=run, tag=tag, n=0)

    def bump(self, conn: Any, run: str, tag: str) -> None:
        from django.db.models import F

        self.item.objects.filter(run=run, tag=tag).update(n=F("n") + 1)

    def notify(self, conn: Any, run: str) -> None:
        with conn.cursor() as cursor:
            cursor.execute(_NOTIFY, [CHANNEL, run])

    def savepoint_rolled_back(self, conn: Any, run: str, tag: str) -> None:
        from django.db import transaction

        try:
            with transaction.atomic():
                self.item.objects.create(run=run, tag=tag, n=0)
                raise _Undo
        except _Undo:
            pass

    def savepoint_released(self, conn: Any, run: str, tag: str) -> None:
        from django.db import transaction

        with transaction.atomic():
            self.item.objects.create(run=run, tag=tag, n=0)

    def count(self, conn: Any, run: str, which: str) -> int:
        return int(self.item.objects.filter(run=which).count())

    def doom(self, conn: Any, run: str) -> None:
        self.child.objects.create(run=run, parent=-1)


class _Undo(Exception):
    """Raised inside ``atomic()`` to roll its savepoint back."""


def setup_django(style: Django, target: Target) -> None:
    """Configure Django for `target` (once per process) and define the models."""
    import django
    from django.conf import settings

    settings.configure(
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": target.dbname,
                "USER": target.user,
                "HOST": target.host,
                "PORT": str(target.port),
            }
        },
        INSTALLED_APPS=[],
        USE_TZ=True,
    )
    django.setup()
    from django.db import models

    class Item(models.Model):
        run = models.TextField()
        tag = models.TextField()
        n = models.IntegerField(default=0)

        class Meta:
            app_label = "explore"
            db_table = "explore_items"
            managed = False

    class Child(models.Model):
        run = models.TextField()
        parent = models.IntegerField()

        class Meta:
            app_label = "explore"
            db_table = "explore_child"
            managed = False

    style.item, style.child = Item, Child


STYLES: dict[str, Callable[[], Any]] = {
    "sqlalchemy_core": Core,
    "orm_autoflush_on": lambda: Orm(autoflush=True, driver="psycopg"),
    "orm_autoflush_off": lambda: Orm(autoflush=False, driver="psycopg2"),
    "async_session_asyncpg": lambda: AsyncOrm("asyncpg"),
    "async_session_psycopg": lambda: AsyncOrm("psycopg"),
    "psycopg_pool": PsycopgPool,
    "psycopg2_pool": Psycopg2Pool,
    "asyncpg_pool": AsyncpgPool,
    "django_orm": Django,
}
