"""The state database: what each product should be in the catalog, what the catalog was last confirmed to hold,
the runs that put it there, and the webhook deliveries already processed.

The database is the source of truth; the queue only carries `(source, product_id)` pointers. A row is converged
when `desired_hash == synced_hash`. Deletion is a desired state like any other: its hash is `DELETED`.

SQLite is the embedded default (WAL, a busy timeout, `BEGIN IMMEDIATE` for writes so two writers queue instead of
failing on lock upgrade); PostgreSQL (`postgresql+psycopg://`) in production. Engines are disposed in a forked child
(Celery prefork) because pooled connections must not cross a fork.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Engine,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    and_,
    case,
    create_engine,
    delete,
    event,
    false,
    func,
    literal,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

# externalIds are unique per catalog account; every source writes to this one until the sources file names accounts.
from config.accounts import DEFAULT_ACCOUNT

# The desired/synced hash of "not in the catalog".
DELETED = "deleted"
# The synced hash of "the catalog may hold anything": a forced resend or an audit repair makes the row push again,
# an upsert for a wanted product and a delete for an unwanted one, whatever the hashes said before.
UNKNOWN = "unknown"
# Why a product is kept out of the catalog: its externalId belongs to another (source, product) of the account.
EXTERNAL_ID_CONFLICT = "external_id_conflict"
# A run count set when an operator confirmed the run's removals past the deletion brake: the brake's window starts
# afresh after it.
MASS_DELETE_CONFIRMED = "mass_delete_confirmed"
# The error of a run left `running` by a sync whose process stopped: the next holder of the lock records it.
ABANDONED_RUN = "abandoned: the process holding the lock stopped"
# The error of a run left `running` when an operator cleared the lock (`catalog-sync unlock`).
UNLOCKED_RUN = "abandoned: the lock was cleared by an operator (catalog-sync unlock)"
# SQLite waits this long for a competing writer before giving up (milliseconds).
SQLITE_BUSY_TIMEOUT_MS = 30_000
# Execution option marking a connection whose transactions only read (SQLite begins them deferred).
READ_ONLY_OPTION = "catalog_sync_read_only"
# Rows per statement in batched writes: large enough to amortize round trips, small enough for SQLite's
# variable limit (32,766) with ~12 columns a row.
BATCH_SIZE = 500

# `expired`: the catalog let the product expire (validForDays) and its source chose not to restore it.
Status = Literal["pending", "synced", "failed", "skipped", "deleted", "expired"]
RunMode = Literal["full", "incremental", "product"]
RunOutcome = Literal["running", "completed", "failed", "deletion_blocked"]


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, stored naive-UTC so SQLite compares them as text."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the state database; use aware UTC times")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    pass


class ProductRow(Base):
    __tablename__ = "products"

    source: Mapped[str] = mapped_column(String(64), primary_key=True)
    product_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    external_id: Mapped[str] = mapped_column(String(512))
    desired_payload: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    desired_hash: Mapped[str] = mapped_column(String(64))
    source_updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    synced_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    # Why a product is not in the catalog although the source lists it (e.g. `no_images`).
    skip_reason: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # The same in words: the filter rule that matched, the feed line that was unusable (migration 0003).
    skip_detail: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    lease_token: Mapped[str | None] = mapped_column(String(32), nullable=True)
    last_error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    last_error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    last_synced_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The last full run that listed this product: a completed full run deletes the rows it did not see.
    seen_run_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # When a push message was last sent for this row; reconcile re-sends only after `requeue_after`, so a lost
    # message costs a delay and a backlog in the queue is not duplicated every few seconds.
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The catalog account the product is written to; externalIds are unique within it.
    account: Mapped[str] = mapped_column(String(64), default=DEFAULT_ACCOUNT, server_default=DEFAULT_ACCOUNT)
    # The externalId the catalog was last confirmed to hold for this product (None: nothing). It differs from
    # `external_id` (the desired one) after a template change, until the push that moves the product converges.
    catalog_external_id: Mapped[str | None] = mapped_column(String(512), nullable=True)
    # The catalog's `expiresAt` from the last upsert: an audit tells an expired product from a deleted one.
    catalog_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Touched by a webhook or an admin command: served ahead of bulk work, through every wait and retry, until the
    # row converges.
    priority: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    __table_args__ = (
        Index("ix_products_due", "status", "next_attempt_at"),
        Index("ix_products_source_status", "source", "status"),
        Index("ix_products_catalog_id", "account", "catalog_external_id"),
    )


class ExternalIdRow(Base):
    """Which (source, product) owns an externalId in an account. The primary key is the uniqueness guarantee that
    concurrent writers (a full sync of one source, a webhook of another) cannot both get past.

    A claim is released lazily: another product may take it over once the owner's row neither wants that id
    (`external_id` with a live desired state) nor holds it in the catalog (`catalog_external_id`)."""

    __tablename__ = "external_ids"

    account: Mapped[str] = mapped_column(String(64), primary_key=True)
    external_id: Mapped[str] = mapped_column(String(512), primary_key=True)
    source: Mapped[str] = mapped_column(String(64))
    product_id: Mapped[str] = mapped_column(String(255))

    __table_args__ = (Index("ix_external_ids_owner", "source", "product_id"),)


class RunRow(Base):
    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(64), index=True)
    mode: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    outcome: Mapped[str] = mapped_column(String(24), default="running")
    counts: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)
    # Incremental runs after this one read products updated since this instant (minus an overlap).
    watermark: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


class SourceStateRow(Base):
    """Per-source operational state: a pause after the catalog refused our credentials, and the lock that keeps
    two syncs of one source from reading it at once."""

    __tablename__ = "source_state"

    source: Mapped[str] = mapped_column(String(64), primary_key=True)
    paused_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    paused_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    sync_lock_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    sync_lock_token: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # A sync that fell due while another held the lock waits here instead of being dropped; `full` covers
    # `incremental`, so a waiting full run is never replaced by an incremental one.
    deferred_mode: Mapped[str | None] = mapped_column(String(16), nullable=True)
    deferred_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    deferred_reason: Mapped[str | None] = mapped_column(Text, nullable=True)


class DeliveryRow(Base):
    """A webhook delivery already processed, kept until `expires_at` to drop re-deliveries."""

    __tablename__ = "webhook_deliveries"

    source: Mapped[str] = mapped_column(String(64), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class ImageCheckRow(Base):
    """What the last check of an image URL found (worker/images.py), keyed by the URL's sha256: URLs are long."""

    __tablename__ = "image_checks"

    url_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    ok: Mapped[bool] = mapped_column(Boolean)
    # Why the image is unusable (`http_404`, `not_an_image`, `too_large`, `unreachable`), None when ok.
    reason: Mapped[str | None] = mapped_column(String(64), nullable=True)
    content_type: Mapped[str | None] = mapped_column(String(128), nullable=True)
    size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    checked_at: Mapped[datetime] = mapped_column(UTCDateTime)


# --------------------------------------------------------------------------------------------- engine and sessions


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine with the SQLite pragmas the worker needs, or a plain PostgreSQL engine."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}, **kwargs)
        _configure_sqlite(engine)
    else:
        engine = create_engine(url, pool_pre_ping=True, **kwargs)
    _dispose_after_fork(engine)
    return engine


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # pysqlite's own transaction handling would defer BEGIN; we issue BEGIN IMMEDIATE ourselves.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        if engine.url.database not in (None, "", ":memory:"):
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Writers take the write lock up front: a deferred transaction that later upgrades can fail with SQLITE_BUSY
        # without waiting for the busy timeout. Readers (`Store.read_session`) begin deferred: in WAL mode they read
        # a snapshot and never wait for a writer.
        if conn.get_execution_options().get(READ_ONLY_OPTION):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")


def _dispose_after_fork(engine: Engine) -> None:
    """SQLAlchemy's recipe for pools and os.fork(): a connection made by another process is discarded on checkout."""

    @event.listens_for(engine, "connect")
    def _on_connect(_dbapi_conn: Any, record: Any) -> None:
        record.info["pid"] = os.getpid()

    @event.listens_for(engine, "checkout")
    def _on_checkout(_dbapi_conn: Any, record: Any, proxy: Any) -> None:
        if record.info.get("pid") != os.getpid():
            record.dbapi_connection = proxy.dbapi_connection = None
            raise DisconnectionError(f"connection made by process {record.info.get('pid')}, not {os.getpid()}")


# ------------------------------------------------------------------------------------------------- the store


@dataclass(frozen=True, slots=True)
class DesiredRow:
    """What the planner wants one product to be. `payload is None` means "not in the catalog"."""

    source: str
    product_id: str
    external_id: str
    payload: dict[str, Any] | None
    content_hash: str
    updated_at: datetime | None
    skip_reason: str | None = None
    # Why, in words (the filter rule, the feed line, the owner of a conflicting externalId): shown by
    # `failures --skipped`.
    skip_detail: str | None = None
    account: str = DEFAULT_ACCOUNT

    @property
    def is_deletion(self) -> bool:
        return self.payload is None


@dataclass(frozen=True, slots=True)
class WriteResult:
    changed_ids: tuple[str, ...] = ()
    unchanged: int = 0
    stale: int = 0

    @property
    def changed(self) -> int:
        return len(self.changed_ids)


@dataclass(frozen=True, slots=True)
class Claim:
    """A leased row ready to push."""

    source: str
    product_id: str
    external_id: str
    payload: dict[str, Any] | None
    desired_hash: str
    synced_hash: str | None
    attempts: int
    skip_reason: str | None
    lease_token: str
    priority: bool = False
    # The externalId the catalog holds for this product, when it is not (or no longer) the desired one.
    catalog_external_id: str | None = None


@dataclass(frozen=True, slots=True)
class CatalogOwner:
    """The owner of an externalId and its row (the row fields are None when the row is gone)."""

    source: str
    product_id: str
    external_id: str | None
    catalog_external_id: str | None
    desired_hash: str | None
    synced_hash: str | None
    payload: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class UnlockResult:
    """What clearing a source's sync lock did: whether it was cleared, whether a live lease held it then, and
    how many runs it left `running` were marked failed."""

    cleared: bool
    live: bool
    lease_until: datetime | None
    runs_failed: int


class Store:
    """Queries and writes over the state tables. One instance per process; sessions are short."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def from_url(cls, url: str) -> Store:
        return cls(make_engine(url))

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    @contextmanager
    def read_session(self) -> Iterator[Session]:
        """A transaction that only reads: on SQLite it does not queue behind writers for the write lock."""
        with self.engine.connect() as conn:
            conn.execution_options(**{READ_ONLY_OPTION: True})
            with Session(bind=conn, expire_on_commit=False) as session, session.begin():
                yield session

    def close(self) -> None:
        self.engine.dispose()

    # ---------------------------------------------------------------------------------------------- desired rows

    def write_desired(
        self,
        rows: Sequence[DesiredRow],
        *,
        run_id: int | None = None,
        force: bool = False,
        priority: bool = False,
        resend: bool = False,
    ) -> WriteResult:
        """Record desired states in one transaction per batch.

        A row whose hash did not change costs nothing but the `seen` stamp. A changed row becomes pending (or
        converged, when the catalog already holds it), its attempts reset. An incoming row older than the stored
        one (by the source's `updated_at`) is ignored unless `force`: a slow full-sync page never undoes a newer
        webhook. The guard is in the SQL itself (`ON CONFLICT … DO UPDATE … WHERE`) so concurrent writers agree.

        `priority` rows (a webhook, an admin command) are marked as on their way, since the caller hands them to
        the queue at once, and keep their priority until they converge. Bulk rows wait for the feeder
        (`take_bulk`), which hands the queue only what the budget can serve.

        A live product whose externalId another product of the account owns is recorded `skipped:
        external_id_conflict` (naming the owner) and never written to the catalog. `resend` also makes unchanged
        rows push again, whatever the catalog is believed to hold (`resync --force`).
        """
        changed: list[str] = []
        unchanged = stale = 0
        for start in range(0, len(rows), BATCH_SIZE):
            batch = _dedupe(rows[start : start + BATCH_SIZE])
            with self.session() as session:
                ids, u, s = self._write_batch(
                    session, batch, run_id=run_id, force=force, priority=priority, resend=resend
                )
            changed.extend(ids)
            unchanged, stale = unchanged + u, stale + s
        return WriteResult(tuple(changed), unchanged, stale)

    def _write_batch(
        self,
        session: Session,
        batch: Sequence[DesiredRow],
        *,
        run_id: int | None,
        force: bool,
        priority: bool,
        resend: bool,
    ) -> tuple[list[str], int, int]:
        if not batch:
            return [], 0, 0
        source = batch[0].source
        if any(row.source != source for row in batch):
            raise ValueError("a batch of desired rows must come from one source")
        ids = [row.product_id for row in batch]
        existing = {
            r.product_id: r
            for r in session.execute(
                select(
                    ProductRow.product_id,
                    ProductRow.desired_hash,
                    ProductRow.source_updated_at,
                    ProductRow.skip_detail,
                ).where(ProductRow.source == source, ProductRow.product_id.in_(ids))
            )
        }
        to_write: list[dict[str, Any]] = []
        unchanged = stale = 0
        resent: list[str] = []
        now = utcnow()
        for row in batch:
            old = existing.get(row.product_id)
            if old is not None and old.desired_hash == row.content_hash and not force:
                if resend:
                    resent.append(row.product_id)
                else:
                    unchanged += 1
                continue
            if old is not None and not force and _older(row.updated_at, old.source_updated_at):
                stale += 1
                continue
            to_write.append(
                {
                    "source": row.source,
                    "account": row.account,
                    "product_id": row.product_id,
                    "external_id": row.external_id,
                    "desired_payload": row.payload,
                    "desired_hash": row.content_hash,
                    "source_updated_at": row.updated_at,
                    "skip_reason": row.skip_reason,
                    "status": "skipped" if row.skip_reason and row.is_deletion else "pending",
                    "attempts": 0,
                    "next_attempt_at": None,
                    "last_error_code": row.skip_reason,
                    "last_error_message": None,
                    "skip_detail": row.skip_detail if row.skip_reason else None,
                    "seen_run_id": run_id,
                    "enqueued_at": now if priority else None,
                    "changed_at": now,
                    "priority": priority,
                }
            )
        self._refuse_conflicts(session, to_write)
        # A product refused again for the same owner changes nothing: no write, no push, counted unchanged.
        refused_again = [
            v
            for v in to_write
            if v["skip_reason"] == EXTERNAL_ID_CONFLICT
            and (old := existing.get(v["product_id"])) is not None
            and old.desired_hash == DELETED
            and old.skip_detail == v["skip_detail"]
        ]
        if refused_again and not force:
            unchanged += len(refused_again)
            skip = {v["product_id"] for v in refused_again}
            to_write = [v for v in to_write if v["product_id"] not in skip]
        written = self._upsert_rows(session, to_write, force=force) if to_write else []
        # Rows the guard refused (a concurrent newer write) count as stale.
        stale += len(to_write) - len(written)
        if resend:
            marked = self._mark_unsynced(session, source, resent + written, priority=priority)
            written = list(dict.fromkeys(written + marked))
        if run_id is not None:
            session.execute(
                update(ProductRow)
                .where(ProductRow.source == source, ProductRow.product_id.in_(ids))
                .values(seen_run_id=run_id)
            )
        return written, unchanged, stale

    def _refuse_conflicts(self, session: Session, values: list[dict[str, Any]]) -> None:
        """Claim the externalIds of the live rows about to be written; a row whose id another product owns (and
        still wants or holds) becomes `skipped: external_id_conflict`, in place."""
        live = [v for v in values if v["desired_payload"] is not None]
        if not live:
            return
        account = live[0]["account"]
        claims: dict[str, dict[str, str]] = {}
        for v in live:
            claims.setdefault(
                v["external_id"],
                {
                    "account": account,
                    "external_id": v["external_id"],
                    "source": v["source"],
                    "product_id": v["product_id"],
                },
            )
        in_batch = {(v["source"], v["product_id"]) for v in live}
        insert_fn = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
        # Sorted, so two writers that claim overlapping ids lock them in one order (PostgreSQL) and never deadlock.
        ordered = sorted(claims)
        session.execute(
            insert_fn(ExternalIdRow).on_conflict_do_nothing(index_elements=["account", "external_id"]),
            [claims[external_id] for external_id in ordered],
        )
        # The claims stay locked until this transaction commits: another writer that wants to take one over decides
        # only after this one has written its row, so it cannot take an id this one is about to use.
        owners = self._owners(session, account, ordered, lock=True)
        for value in live:
            owner = owners[value["external_id"]]
            if owner == (value["source"], value["product_id"]):
                continue
            # A product of this very batch owns it (two products of one source render the same id): the first wins.
            if owner not in in_batch and not self._still_owns(session, account, value["external_id"], owner):
                taken = session.execute(
                    update(ExternalIdRow)
                    .where(
                        ExternalIdRow.account == account,
                        ExternalIdRow.external_id == value["external_id"],
                        ExternalIdRow.source == owner[0],
                        ExternalIdRow.product_id == owner[1],
                    )
                    .values(source=value["source"], product_id=value["product_id"])
                    .returning(ExternalIdRow.source)
                ).first()
                if taken is not None:
                    owners[value["external_id"]] = (value["source"], value["product_id"])
                    continue
                owner = self._owners(session, account, [value["external_id"]], lock=True)[value["external_id"]]
            value.update(
                desired_payload=None,
                desired_hash=DELETED,
                skip_reason=EXTERNAL_ID_CONFLICT,
                status="skipped",
                last_error_code=EXTERNAL_ID_CONFLICT,
                skip_detail=conflict_message(value["external_id"], owner),
            )

    @staticmethod
    def _owners(
        session: Session, account: str, external_ids: Sequence[str], *, lock: bool = False
    ) -> dict[str, tuple[str, str]]:
        query = select(ExternalIdRow.external_id, ExternalIdRow.source, ExternalIdRow.product_id).where(
            ExternalIdRow.account == account, ExternalIdRow.external_id.in_(list(external_ids))
        )
        if lock:
            # SQLite has no row locks and needs none: its writers already run one at a time (BEGIN IMMEDIATE).
            query = query.order_by(ExternalIdRow.external_id).with_for_update()
        return {external_id: (src, pid) for external_id, src, pid in session.execute(query)}

    @staticmethod
    def _still_owns(session: Session, account: str, external_id: str, owner: tuple[str, str]) -> bool:
        """The owner's row still wants this id for a live product, or the catalog still holds it under this id."""
        row = session.execute(
            select(
                ProductRow.external_id, ProductRow.desired_hash, ProductRow.catalog_external_id, ProductRow.account
            ).where(ProductRow.source == owner[0], ProductRow.product_id == owner[1])
        ).first()
        if row is None or row.account != account:
            return False
        wants: bool = row.external_id == external_id and row.desired_hash != DELETED
        return wants or row.catalog_external_id == external_id

    def resend_rows(self, source: str, product_ids: Sequence[str], *, priority: bool = True) -> list[str]:
        """Forget what the catalog was confirmed to hold for these rows: they push again (`--force`)."""
        with self.session() as session:
            return self._mark_unsynced(session, source, product_ids, priority=priority)

    @staticmethod
    def _mark_unsynced(session: Session, source: str, product_ids: Sequence[str], *, priority: bool) -> list[str]:
        """Forget what the catalog was confirmed to hold: the rows push again (an upsert, or a delete); priority
        rows are on their way at once, bulk rows wait for the feeder.

        A row kept out of the catalog that holds nothing there (a conflict, a product never sent) is left alone:
        a delete on its behalf could only remove another product's externalId."""
        if not product_ids:
            return []
        result = session.execute(
            update(ProductRow)
            .where(
                ProductRow.source == source,
                ProductRow.product_id.in_(list(product_ids)),
                or_(ProductRow.desired_hash != DELETED, ProductRow.catalog_external_id.is_not(None)),
            )
            .values(
                synced_hash=UNKNOWN,
                status=case((ProductRow.status == "skipped", "skipped"), else_="pending"),
                attempts=0,
                next_attempt_at=None,
                enqueued_at=utcnow() if priority else None,
                changed_at=utcnow(),
                # A bulk resend never takes a webhook's priority away before the row converges.
                priority=True if priority else ProductRow.priority,
            )
            .returning(ProductRow.product_id)
        )
        return [r[0] for r in result]

    def _upsert_rows(self, session: Session, values: list[dict[str, Any]], *, force: bool) -> list[str]:
        dialect = session.get_bind().dialect.name
        insert_fn = postgresql.insert if dialect == "postgresql" else sqlite.insert
        # The rows go as executemany parameters, not `.values(rows)`: the statement is then compiled once per dialect
        # and `force`, and cached, instead of once per call (SQLAlchemy's insertmanyvalues still sends one INSERT).
        stmt = insert_fn(ProductRow)
        excluded = stmt.excluded
        table = ProductRow.__table__.c
        converged_status = case(
            (excluded.skip_reason.is_not(None), "skipped"),
            (excluded.desired_hash == DELETED, "deleted"),
            else_="synced",
        )
        set_ = {
            "external_id": excluded.external_id,
            "desired_payload": excluded.desired_payload,
            "desired_hash": excluded.desired_hash,
            "source_updated_at": excluded.source_updated_at,
            "skip_reason": excluded.skip_reason,
            "status": case((table.synced_hash == excluded.desired_hash, converged_status), else_=excluded.status),
            "attempts": 0,
            "next_attempt_at": None,
            "last_error_code": excluded.last_error_code,
            "last_error_message": None,
            "skip_detail": excluded.skip_detail,
            "enqueued_at": excluded.enqueued_at,
            "changed_at": excluded.changed_at,
            # A bulk write never takes a webhook's priority away before the row converges.
            "priority": or_(table.priority, excluded.priority),
        }
        where = None
        if not force:
            where = or_(
                table.source_updated_at.is_(None),
                excluded.source_updated_at.is_(None),
                excluded.source_updated_at >= table.source_updated_at,
            )
        stmt = stmt.on_conflict_do_update(index_elements=["source", "product_id"], set_=set_, where=where)
        result = session.execute(stmt.returning(ProductRow.product_id), values)
        return [r[0] for r in result]

    @staticmethod
    def _unseen(source: str, run_id: int, started_at: datetime) -> list[Any]:
        # Not listed by the run, and not written since it started: a product a webhook created while the run was
        # reading is new, not gone.
        return [
            ProductRow.source == source,
            ProductRow.desired_hash != DELETED,
            or_(ProductRow.seen_run_id.is_(None), ProductRow.seen_run_id != run_id),
            ProductRow.changed_at < started_at,
        ]

    def mark_missing_for_deletion(self, source: str, run_id: int, started_at: datetime) -> list[str]:
        """After a complete full run: products the source no longer lists become deletions. Returns their ids."""
        with self.session() as session:
            result = session.execute(
                update(ProductRow)
                .where(*self._unseen(source, run_id, started_at))
                .values(
                    desired_payload=None,
                    desired_hash=DELETED,
                    skip_reason=None,
                    skip_detail=None,
                    status=case((ProductRow.synced_hash == DELETED, "deleted"), else_="pending"),
                    attempts=0,
                    next_attempt_at=None,
                    last_error_code="removed_from_source",
                    last_error_message=None,
                    enqueued_at=None,
                    changed_at=utcnow(),
                )
                .returning(ProductRow.product_id)
            )
            return [r[0] for r in result]

    def live_ids(self, source: str, product_ids: Sequence[str]) -> set[str]:
        """Those of `product_ids` whose desired state is to be in the catalog."""
        if not product_ids:
            return set()
        with self.read_session() as session:
            query = select(ProductRow.product_id).where(
                ProductRow.source == source,
                ProductRow.product_id.in_(list(product_ids)),
                ProductRow.desired_hash != DELETED,
            )
            return set(session.scalars(query))

    def group_members(self, source: str, group: str, separator: str) -> list[str]:
        """The ids of a split product's colourways still wanted in the catalog (`{group}{separator}…`): the state
        remembers a group by its colourways' ids, so a colour the shop dropped is found without its product."""
        with self.read_session() as session:
            query = select(ProductRow.product_id).where(
                ProductRow.source == source,
                ProductRow.product_id.startswith(f"{group}{separator}", autoescape=True),
                ProductRow.desired_hash != DELETED,
            )
            return sorted(session.scalars(query))

    def tombstones_before(self, source: str, product_ids: Sequence[str], before: datetime) -> set[str]:
        """Those of `product_ids` whose desired state is a deletion recorded before `before` (not a product kept
        out for a reason of ours, which a run rewrites as it reads)."""
        if not product_ids:
            return set()
        with self.read_session() as session:
            query = select(ProductRow.product_id).where(
                ProductRow.source == source,
                ProductRow.product_id.in_(list(product_ids)),
                ProductRow.desired_hash == DELETED,
                ProductRow.skip_reason.is_(None),
                ProductRow.changed_at < before,
            )
            return set(session.scalars(query))

    def skipped(self, source: str | None = None, limit: int = 1000) -> list[ProductRow]:
        """Products kept out of the catalog on purpose (filtered, no usable images, bad source data), with why."""
        query = select(ProductRow).where(ProductRow.status == "skipped").order_by(ProductRow.source).limit(limit)
        if source is not None:
            query = query.where(ProductRow.source == source)
        with self.read_session() as session:
            return list(session.scalars(query))

    def count_live(self, source: str) -> int:
        """Rows of the source still wanted in the catalog: what a deletion brake weighs deletions against."""
        with self.read_session() as session:
            live = and_(ProductRow.source == source, ProductRow.desired_hash != DELETED)
            return session.scalar(select(func.count()).select_from(ProductRow).where(live)) or 0

    def count_missing(self, source: str, run_id: int, started_at: datetime) -> tuple[int, int]:
        """(rows the run did not see that are still wanted in the catalog, all rows still wanted)."""
        with self.read_session() as session:
            live = and_(ProductRow.source == source, ProductRow.desired_hash != DELETED)
            total = session.scalar(select(func.count()).select_from(ProductRow).where(live)) or 0
            unseen = self._unseen(source, run_id, started_at)
            missing = session.scalar(select(func.count()).select_from(ProductRow).where(*unseen)) or 0
        return missing, total

    def clear_enqueued(self, source: str, product_ids: Sequence[str]) -> None:
        """The push messages for these rows never reached the broker: reconcile may send them at once."""
        with self.session() as session:
            session.execute(
                update(ProductRow)
                .where(ProductRow.source == source, ProductRow.product_id.in_(list(product_ids)))
                .values(enqueued_at=None)
            )

    def mark_dequeued(self, source: str, product_id: str) -> None:
        """A push message was consumed without a lease (paused source, not yet due): reconcile may send another
        when the row is due, instead of waiting `requeue_after` for a message that is gone."""
        with self.session() as session:
            session.execute(
                update(ProductRow)
                .where(
                    ProductRow.source == source, ProductRow.product_id == product_id, ProductRow.lease_until.is_(None)
                )
                .values(enqueued_at=None)
            )

    def mark_deleted(
        self,
        source: str,
        product_id: str,
        *,
        updated_at: datetime | None,
        external_id: str | None = None,
        account: str = DEFAULT_ACCOUNT,
    ) -> bool:
        """A webhook or admin deletion. Returns False when the stored row is newer than the deletion.

        An unknown product still gets a tombstone row, so a late update older than the deletion is recognized
        as stale instead of resurrecting the product.
        """
        with self.session() as session:
            current = session.get(ProductRow, (source, product_id))
            if current is not None and _older(updated_at, current.source_updated_at):
                return False
            if current is not None and current.desired_hash == DELETED:
                return True
            values = {
                "source": source,
                "product_id": product_id,
                "external_id": current.external_id if current is not None else (external_id or product_id),
                "desired_payload": None,
                "desired_hash": DELETED,
                "source_updated_at": updated_at or (current.source_updated_at if current is not None else None),
                "skip_reason": None,
                "skip_detail": None,
                "status": "pending",
                "attempts": 0,
                "next_attempt_at": None,
                "last_error_code": None,
                "last_error_message": None,
                "seen_run_id": None,
                "enqueued_at": utcnow(),
                "changed_at": utcnow(),
                "priority": True,
                "account": current.account if current is not None else account,
            }
            return bool(self._upsert_rows(session, [values], force=updated_at is None))

    # -------------------------------------------------------------------------------------------------- pushing

    def claim(self, source: str, product_id: str, *, lease_seconds: float, force: bool = False) -> Claim | None:
        """Lease an unconverged row for one push; None when it is converged, leased elsewhere, or held back
        (failed, or not yet due) unless `force`."""
        now = utcnow()
        token = uuid.uuid4().hex
        conditions = [
            ProductRow.source == source,
            ProductRow.product_id == product_id,
            or_(ProductRow.synced_hash.is_(None), ProductRow.desired_hash != ProductRow.synced_hash),
            or_(ProductRow.lease_until.is_(None), ProductRow.lease_until < now),
        ]
        if not force:
            conditions.append(ProductRow.status.in_(("pending", "skipped", "deleted", "synced")))
            conditions.append(or_(ProductRow.next_attempt_at.is_(None), ProductRow.next_attempt_at <= now))
        with self.session() as session:
            row = session.execute(
                update(ProductRow)
                .where(*conditions)
                .values(lease_until=now + timedelta(seconds=lease_seconds), lease_token=token)
                .returning(
                    ProductRow.external_id,
                    ProductRow.desired_payload,
                    ProductRow.desired_hash,
                    ProductRow.synced_hash,
                    ProductRow.attempts,
                    ProductRow.skip_reason,
                    ProductRow.catalog_external_id,
                    ProductRow.priority,
                )
            ).first()
        if row is None:
            return None
        return Claim(source, product_id, row[0], row[1], row[2], row[3], row[4], row[5], token, bool(row[7]), row[6])

    def record_success(self, claim: Claim, *, expires_at: datetime | None = None, called: bool = True) -> bool:
        """The catalog now holds `claim.desired_hash` (under `claim.external_id`, or nothing for a deletion), with
        the catalog's `expiresAt`. Returns True when the row is converged; False when the desired state changed
        meanwhile (the row stays pending for another push).

        `called` False: converged without a catalog call (a deletion of something never in the catalog), so
        `last_synced_at` keeps saying when the catalog last confirmed anything, and such rows are not counted as
        deleted from the catalog."""
        converged_status = "skipped" if claim.skip_reason else ("deleted" if claim.payload is None else "synced")
        now = utcnow()
        with self.session() as session:
            result = session.execute(
                update(ProductRow)
                .where(
                    ProductRow.source == claim.source,
                    ProductRow.product_id == claim.product_id,
                    ProductRow.lease_token == claim.lease_token,
                )
                .values(
                    synced_hash=claim.desired_hash,
                    status=case(
                        (ProductRow.desired_hash == claim.desired_hash, converged_status),
                        else_="pending",
                    ),
                    attempts=0,
                    next_attempt_at=None,
                    lease_until=None,
                    lease_token=None,
                    enqueued_at=None,
                    last_error_code=case(
                        (ProductRow.desired_hash == claim.desired_hash, claim.skip_reason), else_=None
                    ),
                    last_error_message=None,
                    last_synced_at=now if called else ProductRow.last_synced_at,
                    catalog_external_id=None if claim.payload is None else claim.external_id,
                    catalog_expires_at=expires_at,
                    priority=case((ProductRow.desired_hash == claim.desired_hash, False), else_=ProductRow.priority),
                )
                .returning(ProductRow.desired_hash)
            ).first()
        return result is not None and result[0] == claim.desired_hash

    def record_failure(
        self,
        claim: Claim,
        *,
        code: str,
        message: str,
        retry_at: datetime | None,
        count_attempt: bool = True,
        max_attempts: int,
    ) -> Status:
        """Record a failed push: retried at `retry_at`, or `failed` when `retry_at` is None or attempts ran out."""
        attempts = claim.attempts + (1 if count_attempt else 0)
        status: Status = "failed" if retry_at is None or attempts >= max_attempts else "pending"
        with self.session() as session:
            session.execute(
                update(ProductRow)
                .where(
                    ProductRow.source == claim.source,
                    ProductRow.product_id == claim.product_id,
                    ProductRow.lease_token == claim.lease_token,
                )
                .values(
                    # A desired state that changed meanwhile deserves a fresh start, not this failure.
                    status=case((ProductRow.desired_hash == claim.desired_hash, status), else_="pending"),
                    attempts=case((ProductRow.desired_hash == claim.desired_hash, attempts), else_=0),
                    next_attempt_at=(
                        case(
                            (ProductRow.desired_hash == claim.desired_hash, literal(retry_at, UTCDateTime())),
                            else_=None,
                        )
                        if status == "pending"
                        else None
                    ),
                    last_error_code=code[:64],
                    last_error_message=message[:2000],
                    lease_until=None,
                    lease_token=None,
                    enqueued_at=None,
                )
            )
        return status

    def release(self, claim: Claim, *, retry_at: datetime | None = None) -> None:
        """Give a lease back without counting an attempt (e.g. the source is paused)."""
        with self.session() as session:
            session.execute(
                update(ProductRow)
                .where(
                    ProductRow.source == claim.source,
                    ProductRow.product_id == claim.product_id,
                    ProductRow.lease_token == claim.lease_token,
                )
                .values(lease_until=None, lease_token=None, enqueued_at=None, next_attempt_at=retry_at)
            )

    @staticmethod
    def _due(now: datetime, requeue_after: float) -> list[Any]:
        """Rows to push now: unconverged, due, not leased, not already on their way through the queue (or sent
        longer than `requeue_after` seconds ago, so the message was lost), whose source is not paused."""
        paused = select(SourceStateRow.source).where(SourceStateRow.paused_until > now)
        return [
            ProductRow.status.in_(("pending", "skipped")),
            or_(ProductRow.synced_hash.is_(None), ProductRow.desired_hash != ProductRow.synced_hash),
            or_(ProductRow.next_attempt_at.is_(None), ProductRow.next_attempt_at <= now),
            or_(ProductRow.lease_until.is_(None), ProductRow.lease_until < now),
            or_(ProductRow.enqueued_at.is_(None), ProductRow.enqueued_at < now - timedelta(seconds=requeue_after)),
            ProductRow.source.not_in(paused),
        ]

    def take_due(
        self,
        *,
        limit: int,
        requeue_after: float,
        now: datetime | None = None,
        source: str | None = None,
        sources: Sequence[str] | None = None,
        priority: bool | None = None,
    ) -> list[tuple[str, str]]:
        """The next pushes to send, oldest change first (see `_due`): only priority rows, only bulk rows, or both
        (`priority=None`). They are stamped as enqueued in the same transaction."""
        now = now or utcnow()
        conditions = [*self._due(now, requeue_after), *self._scope(source, None, None)]
        if sources is not None:
            conditions.append(ProductRow.source.in_(list(sources)))
        if priority is not None:
            conditions.append(ProductRow.priority.is_(priority))
        with self.session() as session:
            rows = session.execute(
                select(ProductRow.source, ProductRow.product_id)
                .where(*conditions)
                .order_by(ProductRow.changed_at)
                .limit(limit)
            ).all()
            by_source: dict[str, list[str]] = {}
            for src, pid in rows:
                by_source.setdefault(src, []).append(pid)
            for src, ids in by_source.items():
                session.execute(
                    update(ProductRow)
                    .where(ProductRow.source == src, ProductRow.product_id.in_(ids))
                    .values(enqueued_at=now)
                )
        return [(r[0], r[1]) for r in rows]

    def due_counts(
        self, sources: Sequence[str], *, requeue_after: float, now: datetime | None = None, limit: int | None = None
    ) -> dict[str, int]:
        """{source: bulk rows due now} for these sources, each capped at `limit`."""
        now = now or utcnow()
        query = (
            select(ProductRow.source, func.count())
            .where(
                *self._due(now, requeue_after),
                ProductRow.source.in_(list(sources)),
                ProductRow.priority.is_(False),
            )
            .group_by(ProductRow.source)
        )
        with self.read_session() as session:
            counts = {row[0]: row[1] for row in session.execute(query)}
        return {source: min(count, limit) if limit is not None else count for source, count in counts.items()}

    def in_flight(self, sources: Sequence[str], *, requeue_after: float, now: datetime | None = None) -> int:
        """Pushes of these sources handed to the queue and not yet done (see `in_flight_by_source`)."""
        return sum(self.in_flight_by_source(sources, requeue_after=requeue_after, now=now).values())

    def in_flight_by_source(
        self, sources: Sequence[str], *, requeue_after: float, now: datetime | None = None
    ) -> dict[str, int]:
        """{source: pushes handed to the queue and not yet done}: sent within `requeue_after` seconds, or running
        (leased). The feeder keeps their sum under what the budget serves in the next few seconds."""
        now = now or utcnow()
        query = (
            select(ProductRow.source, func.count())
            .where(
                ProductRow.source.in_(list(sources)),
                or_(ProductRow.synced_hash.is_(None), ProductRow.desired_hash != ProductRow.synced_hash),
                or_(ProductRow.enqueued_at >= now - timedelta(seconds=requeue_after), ProductRow.lease_until >= now),
            )
            .group_by(ProductRow.source)
        )
        with self.read_session() as session:
            return {row[0]: row[1] for row in session.execute(query)}

    def waiting(self, sources: Sequence[str], *, now: datetime | None = None) -> dict[bool, int]:
        """{priority: rows} still to push for these sources (unconverged, not failed), for `status`."""
        query = (
            select(ProductRow.priority, func.count())
            .where(
                ProductRow.source.in_(list(sources)),
                ProductRow.status.in_(("pending", "skipped")),
                or_(ProductRow.synced_hash.is_(None), ProductRow.desired_hash != ProductRow.synced_hash),
            )
            .group_by(ProductRow.priority)
        )
        with self.read_session() as session:
            counts = {bool(row[0]): row[1] for row in session.execute(query)}
        return {True: counts.get(True, 0), False: counts.get(False, 0)}

    def retry_failed(self, source: str | None = None, product_ids: Iterable[str] | None = None) -> int:
        """Put failed rows back in line (the admin `retry` command)."""
        conditions = [ProductRow.status == "failed"]
        if source is not None:
            conditions.append(ProductRow.source == source)
        ids = list(product_ids or [])
        if ids:
            conditions.append(ProductRow.product_id.in_(ids))
        with self.session() as session:
            result = session.execute(
                update(ProductRow)
                .where(*conditions)
                .values(status="pending", attempts=0, next_attempt_at=None, priority=True)
                .returning(ProductRow.product_id)
            )
            return len(result.all())

    # ---------------------------------------------------------------------------------------------- source pause

    def _source_state(self, session: Session, source: str) -> SourceStateRow:
        row = session.get(SourceStateRow, source)
        if row is None:
            row = SourceStateRow(source=source)
            session.add(row)
            session.flush()
        return row

    def pause_source(self, source: str, *, until: datetime, reason: str) -> None:
        with self.session() as session:
            row = self._source_state(session, source)
            row.paused_until, row.paused_reason = until, reason

    def resume_source(self, source: str) -> None:
        with self.session() as session:
            session.execute(
                update(SourceStateRow)
                .where(SourceStateRow.source == source)
                .values(paused_until=None, paused_reason=None)
            )

    def acquire_sync_lock(self, source: str, *, seconds: float) -> str | None:
        """Take the source's sync lock for a lease of `seconds`; a token to renew and release it, or None when
        another sync holds a live lease.

        Only a lock holder runs full and incremental runs, so such a run still `running` when the lock is taken
        was left by a holder that stopped (killed, or its lease ran out): it is marked failed in the same
        transaction, and `status` says so instead of showing it running for ever."""
        now = utcnow()
        token = uuid.uuid4().hex
        with self.session() as session:
            self._source_state(session, source)
            result = session.execute(
                update(SourceStateRow)
                .where(
                    SourceStateRow.source == source,
                    or_(SourceStateRow.sync_lock_until.is_(None), SourceStateRow.sync_lock_until < now),
                )
                .values(sync_lock_until=now + timedelta(seconds=seconds), sync_lock_token=token)
                .returning(SourceStateRow.source)
            ).first()
            if result is None:
                return None
            self._fail_abandoned_runs(session, source, ABANDONED_RUN, now=now)
        return token

    def renew_sync_lock(self, source: str, token: str, *, seconds: float) -> bool:
        """Extend the lease of a lock this token holds; False when it is no longer held with this token (it
        expired and another sync took it, or an operator cleared it): the caller must stop writing."""
        with self.session() as session:
            result = session.execute(
                update(SourceStateRow)
                .where(SourceStateRow.source == source, SourceStateRow.sync_lock_token == token)
                .values(sync_lock_until=utcnow() + timedelta(seconds=seconds))
                .returning(SourceStateRow.source)
            ).first()
        return result is not None

    def release_sync_lock(self, source: str, token: str) -> None:
        with self.session() as session:
            session.execute(
                update(SourceStateRow)
                .where(SourceStateRow.source == source, SourceStateRow.sync_lock_token == token)
                .values(sync_lock_until=None, sync_lock_token=None)
            )

    def clear_sync_lock(self, source: str, *, force: bool = False) -> UnlockResult:
        """The operator's way out (`catalog-sync unlock`): free the source's lock and mark the runs it left
        `running` as failed. A lock whose lease a live sync keeps renewing is left alone unless `force`."""
        now = utcnow()
        with self.session() as session:
            row = session.get(SourceStateRow, source)
            lease_until = row.sync_lock_until if row is not None else None
            live = lease_until is not None and lease_until > now
            if live and not force:
                return UnlockResult(cleared=False, live=True, lease_until=lease_until, runs_failed=0)
            if row is not None:
                row.sync_lock_until = row.sync_lock_token = None
            failed = self._fail_abandoned_runs(session, source, UNLOCKED_RUN, now=now)
        return UnlockResult(cleared=True, live=live, lease_until=lease_until, runs_failed=failed)

    @staticmethod
    def _fail_abandoned_runs(session: Session, source: str, error: str, *, now: datetime) -> int:
        result = session.execute(
            update(RunRow)
            .where(RunRow.source == source, RunRow.outcome == "running", RunRow.mode.in_(("full", "incremental")))
            .values(outcome="failed", finished_at=now, error=error)
            .returning(RunRow.id)
        )
        return len(result.all())

    def defer_sync(self, source: str, mode: str, *, reason: str) -> str:
        """Remember a sync that could not start because another holds the lock; returns the mode that now waits
        (a waiting full run stays full: it covers an incremental one)."""
        with self.session() as session:
            row = self._source_state(session, source)
            if row.deferred_mode != "full":
                row.deferred_mode = mode
            if row.deferred_at is None:
                row.deferred_at = utcnow()
            row.deferred_reason = reason
            return row.deferred_mode or mode

    def take_deferred(self, source: str) -> str | None:
        """The mode of a waiting sync, cleared in the same transaction (the lock holder runs it)."""
        with self.session() as session:
            row = session.get(SourceStateRow, source)
            if row is None or row.deferred_mode is None:
                return None
            mode = row.deferred_mode
            row.deferred_mode = row.deferred_at = row.deferred_reason = None
            return mode

    def sync_state(self, source: str, *, now: datetime | None = None) -> dict[str, Any]:
        """What `status` says about a source's syncs: whether one runs, and which kind waits since when and why."""
        now = now or utcnow()
        with self.read_session() as session:
            row = session.get(SourceStateRow, source)
        if row is None:
            return {"running": False, "waiting": None}
        running = row.sync_lock_until is not None and row.sync_lock_until > now
        lease_until = row.sync_lock_until.isoformat() if running and row.sync_lock_until else None
        waiting = None
        if row.deferred_mode is not None:
            waiting = {
                "mode": row.deferred_mode,
                "since": row.deferred_at.isoformat() if row.deferred_at else None,
                "reason": row.deferred_reason,
            }
        return {"running": running, "lease_until": lease_until, "waiting": waiting}

    def source_pause(self, source: str, *, now: datetime | None = None) -> str | None:
        """The reason pushes of this source are paused, or None."""
        now = now or utcnow()
        with self.read_session() as session:
            row = session.get(SourceStateRow, source)
        if row is None or row.paused_until is None or row.paused_until <= now:
            return None
        return row.paused_reason or "paused"

    # ------------------------------------------------------------------------------------------------------ runs

    def start_run(self, source: str, mode: RunMode, *, started_at: datetime | None = None) -> int:
        with self.session() as session:
            run = RunRow(source=source, mode=mode, started_at=started_at or utcnow(), outcome="running", counts={})
            session.add(run)
            session.flush()
            return run.id

    def finish_run(
        self,
        run_id: int,
        *,
        outcome: RunOutcome,
        counts: dict[str, int],
        watermark: datetime | None = None,
        error: str | None = None,
    ) -> None:
        with self.session() as session:
            session.execute(
                update(RunRow)
                .where(RunRow.id == run_id)
                .values(finished_at=utcnow(), outcome=outcome, counts=counts, watermark=watermark, error=error)
            )

    def last_watermark(self, source: str) -> datetime | None:
        """Where the next incremental run starts: the newest watermark of a completed run of this source."""
        with self.read_session() as session:
            return session.scalar(
                select(func.max(RunRow.watermark)).where(
                    RunRow.source == source, RunRow.outcome == "completed", RunRow.mode.in_(("full", "incremental"))
                )
            )

    def removed_since(self, source: str, since: datetime) -> int:
        """Products that full runs of the source finished since `since` took out of the catalog (their `removed`
        count): the deletion brake's window. An operator's confirmation past the brake starts the window afresh:
        what the confirmed run and the runs before it removed no longer counts."""
        query = (
            select(RunRow.counts)
            .where(
                RunRow.source == source,
                RunRow.mode == "full",
                RunRow.outcome == "completed",
                RunRow.finished_at >= since,
            )
            .order_by(RunRow.finished_at.desc(), RunRow.id.desc())
        )
        removed = 0
        with self.read_session() as session:
            for counts in session.scalars(query):
                if counts.get(MASS_DELETE_CONFIRMED):
                    break
                removed += int(counts.get("removed", 0))
        return removed

    def get_run(self, run_id: int) -> RunRow | None:
        with self.read_session() as session:
            return session.get(RunRow, run_id)

    def recent_runs(self, source: str | None = None, limit: int = 10) -> list[RunRow]:
        query = select(RunRow).order_by(RunRow.id.desc()).limit(limit)
        if source is not None:
            query = query.where(RunRow.source == source)
        with self.read_session() as session:
            return list(session.scalars(query))

    # -------------------------------------------------------------------------------------------------- reading

    def get(self, source: str, product_id: str) -> ProductRow | None:
        with self.read_session() as session:
            return session.get(ProductRow, (source, product_id))

    def status_counts(self, source: str | None = None) -> dict[str, dict[str, int]]:
        """{source: {status: count}}."""
        query = select(ProductRow.source, ProductRow.status, func.count()).group_by(
            ProductRow.source, ProductRow.status
        )
        if source is not None:
            query = query.where(ProductRow.source == source)
        out: dict[str, dict[str, int]] = {}
        with self.read_session() as session:
            for src, status, count in session.execute(query):
                out.setdefault(src, {})[status] = count
        return out

    def unconverged_count(
        self, source: str | None = None, *, since: datetime | None = None, product_ids: Sequence[str] | None = None
    ) -> int:
        """Rows still on their way to the catalog (not converged and not failed), optionally only those whose
        desired state changed at or after `since`."""
        conditions = [
            ProductRow.status != "failed",
            or_(ProductRow.synced_hash.is_(None), ProductRow.desired_hash != ProductRow.synced_hash),
        ]
        conditions += self._scope(source, since, product_ids)
        with self.read_session() as session:
            return session.scalar(select(func.count()).select_from(ProductRow).where(*conditions)) or 0

    def outcome_counts(
        self, source: str, *, since: datetime | None = None, product_ids: Sequence[str] | None = None
    ) -> dict[str, int]:
        """{status: count} of the rows whose desired state changed at or after `since`."""
        query = (
            select(ProductRow.status, func.count())
            .where(*self._scope(source, since, product_ids))
            .group_by(ProductRow.status)
        )
        with self.read_session() as session:
            return {row[0]: row[1] for row in session.execute(query)}

    @staticmethod
    def _scope(source: str | None, since: datetime | None, product_ids: Sequence[str] | None) -> list[Any]:
        conditions: list[Any] = []
        if source is not None:
            conditions.append(ProductRow.source == source)
        if since is not None:
            conditions.append(ProductRow.changed_at >= since)
        if product_ids:
            conditions.append(ProductRow.product_id.in_(list(product_ids)))
        return conditions

    def status_breakdown(
        self, source: str, *, since: datetime | None = None, product_ids: Sequence[str] | None = None
    ) -> dict[str, int]:
        """{status: count} where `deleted` counts only rows the catalog confirmed removing (since `since`, when
        given) and `inactive` the other converged deletions: products never in the catalog (drafts, tombstones),
        which cost no call. `status` and a run's summary both count this way, so their numbers agree."""
        removed = and_(ProductRow.status == "deleted", ProductRow.last_synced_at.is_not(None))
        if since is not None:
            removed = and_(removed, ProductRow.last_synced_at >= since)
        label = case((removed, "deleted"), (ProductRow.status == "deleted", "inactive"), else_=ProductRow.status)
        query = select(label, func.count()).where(*self._scope(source, since, product_ids)).group_by(label)
        with self.read_session() as session:
            return {row[0]: row[1] for row in session.execute(query)}

    def problem_summary(
        self,
        source: str,
        *,
        statuses: Sequence[str] = ("skipped", "failed", "pending"),
        since: datetime | None = None,
        product_ids: Sequence[str] | None = None,
    ) -> list[tuple[str, str, int, str]]:
        """(status, reason code, products, one of their messages) for rows with a recorded reason: why products
        are skipped, failed or still pending, largest groups first."""
        # A skip's words are its `skip_detail`; a failure's or a retry's, the last error's message.
        message = case((ProductRow.status == "skipped", ProductRow.skip_detail), else_=ProductRow.last_error_message)
        query = (
            select(ProductRow.status, ProductRow.last_error_code, func.count(), func.max(message))
            .where(
                ProductRow.status.in_(list(statuses)),
                ProductRow.last_error_code.is_not(None),
                *self._scope(source, since, product_ids),
            )
            .group_by(ProductRow.status, ProductRow.last_error_code)
            .order_by(func.count().desc(), ProductRow.last_error_code)
        )
        with self.read_session() as session:
            return [(r[0], r[1] or "", r[2], r[3] or "") for r in session.execute(query)]

    def rows_changed_since(self, source: str, since: datetime, *, limit: int = 1000) -> list[ProductRow]:
        query = (
            select(ProductRow)
            .where(ProductRow.source == source, ProductRow.changed_at >= since)
            .order_by(ProductRow.status, ProductRow.product_id)
            .limit(limit)
        )
        with self.read_session() as session:
            return list(session.scalars(query))

    def latest_run(self, source: str, *, started_after: datetime | None = None) -> RunRow | None:
        query = select(RunRow).where(RunRow.source == source).order_by(RunRow.id.desc()).limit(1)
        if started_after is not None:
            query = query.where(RunRow.started_at >= started_after)
        with self.read_session() as session:
            return session.scalars(query).first()

    def failures(self, source: str | None = None, limit: int = 1000) -> list[ProductRow]:
        query = select(ProductRow).where(ProductRow.status == "failed").order_by(ProductRow.source).limit(limit)
        if source is not None:
            query = query.where(ProductRow.source == source)
        with self.read_session() as session:
            return list(session.scalars(query))

    def products(self, source: str, *, statuses: Sequence[str] | None = None) -> list[ProductRow]:
        query = select(ProductRow).where(ProductRow.source == source).order_by(ProductRow.product_id)
        if statuses:
            query = query.where(ProductRow.status.in_(list(statuses)))
        with self.read_session() as session:
            return list(session.scalars(query))

    # ------------------------------------------------------------------------------------------------ dry runs

    def desired_view(self, source: str, product_ids: Sequence[str]) -> dict[str, ProductRow]:
        """The stored rows of these products, read only (what a dry run compares against)."""
        with self.read_session() as session:
            rows = session.scalars(
                select(ProductRow).where(ProductRow.source == source, ProductRow.product_id.in_(list(product_ids)))
            )
            return {row.product_id: row for row in rows}

    def wanted_rows(self, source: str) -> list[tuple[str, str]]:
        """(product id, externalId) of the source's rows still wanted in the catalog."""
        with self.read_session() as session:
            rows = session.execute(
                select(ProductRow.product_id, ProductRow.external_id).where(
                    ProductRow.source == source, ProductRow.desired_hash != DELETED
                )
            )
            return [(r[0], r[1]) for r in rows]

    def foreign_owners(self, account: str, wanted: Sequence[tuple[str, str, str]]) -> dict[str, tuple[str, str]]:
        """For (externalId, source, product id) triples: the other product that owns and still wants or holds each
        externalId, by externalId; read only (what a write would refuse as a conflict)."""
        with self.read_session() as session:
            owners = self._owners(session, account, [w[0] for w in wanted])
            refused: dict[str, tuple[str, str]] = {}
            for external_id, source, product_id in wanted:
                owner = owners.get(external_id)
                if owner is None or owner == (source, product_id):
                    continue
                if self._still_owns(session, account, external_id, owner):
                    refused[external_id] = owner
            return refused

    # ----------------------------------------------------------------------------------------- drift (audit)

    def catalog_owners(self, account: str, external_ids: Sequence[str]) -> dict[str, CatalogOwner]:
        """For externalIds the catalog lists: the (source, product) that owns each and what its row says."""
        if not external_ids:
            return {}
        query = (
            select(
                ExternalIdRow.external_id,
                ExternalIdRow.source,
                ExternalIdRow.product_id,
                ProductRow.external_id,
                ProductRow.catalog_external_id,
                ProductRow.desired_hash,
                ProductRow.synced_hash,
                ProductRow.desired_payload,
            )
            .join(
                ProductRow,
                and_(ProductRow.source == ExternalIdRow.source, ProductRow.product_id == ExternalIdRow.product_id),
                isouter=True,
            )
            .where(ExternalIdRow.account == account, ExternalIdRow.external_id.in_(list(external_ids)))
        )
        with self.read_session() as session:
            return {row[0]: CatalogOwner(*row[1:]) for row in session.execute(query)}

    def held_in_catalog(
        self, account: str, *, source: str | None = None, synced_before: datetime
    ) -> list[tuple[str, str, str, datetime | None]]:
        """Converged live rows the catalog was confirmed to hold (before `synced_before`): (source, product_id,
        catalog externalId, catalog expiresAt). An audit expects to find each of them in the listing."""
        query = select(
            ProductRow.source, ProductRow.product_id, ProductRow.catalog_external_id, ProductRow.catalog_expires_at
        ).where(
            ProductRow.account == account,
            ProductRow.catalog_external_id.is_not(None),
            ProductRow.desired_hash != DELETED,
            ProductRow.desired_hash == ProductRow.synced_hash,
            or_(ProductRow.last_synced_at.is_(None), ProductRow.last_synced_at < synced_before),
        )
        if source is not None:
            query = query.where(ProductRow.source == source)
        with self.read_session() as session:
            return [(r[0], r[1], str(r[2]), r[3]) for r in session.execute(query)]

    def resend(self, keys: Sequence[tuple[str, str]], *, catalog_holds: bool) -> list[tuple[str, str]]:
        """Audit repair: converged rows push again. `catalog_holds` False (the catalog lost the product): nothing
        is held any more; True (it holds something else): the held product is overwritten. Rows that changed since
        the audit looked are left to their own push. They are bulk work: the feeder hands them to the queue."""
        values: dict[str, Any] = {"status": "pending", "attempts": 0, "next_attempt_at": None, "enqueued_at": None}
        if catalog_holds:
            values["synced_hash"] = UNKNOWN
        else:
            values.update(synced_hash=None, catalog_external_id=None, catalog_expires_at=None)
        return self._update_converged(keys, values)

    def mark_expired(self, keys: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        """The catalog let these products expire and their source does not restore them: recorded `expired`;
        they come back when they change in the source, or with `resync --force`."""
        return self._update_converged(
            keys, {"status": "expired", "catalog_external_id": None, "last_error_code": "expired"}
        )

    def _update_converged(self, keys: Sequence[tuple[str, str]], values: dict[str, Any]) -> list[tuple[str, str]]:
        done: list[tuple[str, str]] = []
        with self.session() as session:
            for start in range(0, len(keys), BATCH_SIZE):
                chunk = list(keys[start : start + BATCH_SIZE])
                result = session.execute(
                    update(ProductRow)
                    .where(
                        tuple_(ProductRow.source, ProductRow.product_id).in_(chunk),
                        ProductRow.desired_hash == ProductRow.synced_hash,
                        ProductRow.lease_until.is_(None) | (ProductRow.lease_until < utcnow()),
                    )
                    .values(**values, changed_at=utcnow())
                    .returning(ProductRow.source, ProductRow.product_id)
                )
                done += [(r[0], r[1]) for r in result]
        return done

    def forget_catalog_ids(self, account: str, external_ids: Sequence[str]) -> int:
        """Orphans the audit deleted from the catalog: rows (of removed sources) that held them hold nothing."""
        count = 0
        with self.session() as session:
            for start in range(0, len(external_ids), BATCH_SIZE):
                chunk = list(external_ids[start : start + BATCH_SIZE])
                result = session.execute(
                    update(ProductRow)
                    .where(ProductRow.account == account, ProductRow.catalog_external_id.in_(chunk))
                    .values(
                        catalog_external_id=None,
                        desired_payload=None,
                        desired_hash=DELETED,
                        synced_hash=DELETED,
                        status="deleted",
                        last_error_code="orphan_deleted",
                        changed_at=utcnow(),
                    )
                    .returning(ProductRow.product_id)
                )
                count += len(result.all())
        return count

    # -------------------------------------------------------------------------------------------------- images

    def image_checks(self, url_hashes: Sequence[str]) -> dict[str, ImageCheckRow]:
        """The stored checks of these URL hashes, by hash."""
        if not url_hashes:
            return {}
        with self.read_session() as session:
            query = select(ImageCheckRow).where(ImageCheckRow.url_hash.in_(list(url_hashes)))
            return {row.url_hash: row for row in session.scalars(query)}

    def record_image_checks(self, rows: Sequence[dict[str, Any]]) -> None:
        """Store check results (keys as `ImageCheckRow`'s columns), replacing older ones of the same URL."""
        if not rows:
            return
        insert_fn = postgresql.insert if self.engine.dialect.name == "postgresql" else sqlite.insert
        stmt = insert_fn(ImageCheckRow)
        columns = ("url", "ok", "reason", "content_type", "size", "checked_at")
        stmt = stmt.on_conflict_do_update(
            index_elements=["url_hash"], set_={name: stmt.excluded[name] for name in columns}
        )
        with self.session() as session:
            session.execute(stmt, list({row["url_hash"]: row for row in rows}.values()))

    # ------------------------------------------------------------------------------------------------ webhooks

    def remember_deliveries(self, source: str, event_ids: Sequence[str], *, now: datetime, keep: timedelta) -> None:
        """Record processed delivery ids in one statement (an id already there, expired or not, stays as is)."""
        if not event_ids:
            return
        values = [
            {"source": source, "event_id": event_id, "received_at": now, "expires_at": now + keep}
            for event_id in dict.fromkeys(event_ids)
        ]
        insert_fn = postgresql.insert if self.engine.dialect.name == "postgresql" else sqlite.insert
        # Parameters as a list (executemany) rather than `.values(rows)`: the statement is compiled once and cached.
        statement = insert_fn(DeliveryRow).on_conflict_do_nothing(index_elements=["source", "event_id"])
        with self.session() as session:
            session.execute(statement, values)

    def delivery_context(
        self, source: str, event_ids: Sequence[str], product_ids: Sequence[str], *, now: datetime
    ) -> tuple[set[str], dict[str, tuple[datetime | None, str]]]:
        """For a batch of webhook deliveries, in one short read: the delivery ids already processed (and not
        expired), and each known product's stored `source_updated_at` and desired hash."""
        with self.read_session() as session:
            seen: set[str] = set()
            if event_ids:
                seen = set(
                    session.scalars(
                        select(DeliveryRow.event_id).where(
                            DeliveryRow.source == source,
                            DeliveryRow.event_id.in_(list(event_ids)),
                            DeliveryRow.expires_at > now,
                        )
                    )
                )
            stored: dict[str, tuple[datetime | None, str]] = {}
            if product_ids:
                rows = session.execute(
                    select(ProductRow.product_id, ProductRow.source_updated_at, ProductRow.desired_hash).where(
                        ProductRow.source == source, ProductRow.product_id.in_(list(product_ids))
                    )
                )
                stored = {product_id: (updated_at, digest) for product_id, updated_at, digest in rows}
        return seen, stored

    def purge_deliveries(self, *, now: datetime | None = None) -> int:
        with self.session() as session:
            result = session.execute(
                delete(DeliveryRow).where(DeliveryRow.expires_at < (now or utcnow())).returning(DeliveryRow.event_id)
            )
            return len(result.all())


def conflict_message(external_id: str, owner: tuple[str, str]) -> str:
    return (
        f"externalId {external_id!r} belongs to source {owner[0]!r} (product {owner[1]}); give the sources "
        'templates that cannot collide, e.g. external_id = "{source}-{id}"'
    )


def _older(incoming: datetime | None, stored: datetime | None) -> bool:
    return incoming is not None and stored is not None and incoming < stored


def _dedupe(rows: Sequence[DesiredRow]) -> list[DesiredRow]:
    """One row per product in a batch, the newest winning (ON CONFLICT cannot touch a row twice per statement)."""
    best: dict[tuple[str, str], DesiredRow] = {}
    for row in rows:
        key = (row.source, row.product_id)
        kept = best.get(key)
        if kept is None or not _older(row.updated_at, kept.updated_at):
            best[key] = row
    return list(best.values())


__all__ = [
    "BATCH_SIZE",
    "DEFAULT_ACCOUNT",
    "DELETED",
    "EXTERNAL_ID_CONFLICT",
    "UNKNOWN",
    "Base",
    "CatalogOwner",
    "Claim",
    "DeliveryRow",
    "DesiredRow",
    "ExternalIdRow",
    "ImageCheckRow",
    "ProductRow",
    "RunRow",
    "SourceStateRow",
    "Store",
    "WriteResult",
    "make_engine",
    "utcnow",
]
