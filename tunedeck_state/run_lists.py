"""Run lists (GET /api/runs, the runs page): filtered, sorted pages at 100,000 runs, by offset or keyset cursor."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, String, and_, func, literal, literal_column, or_, select
from sqlalchemy.orm import Session

from tunedeck_state.labels import has_tag
from tunedeck_state.models import RUN_LOSS_SORT_INDEXES, Run


@dataclass(frozen=True)
class RunPage:
    items: Sequence[Run]
    total: int
    limit: int
    offset: int
    #: Where the next page starts (pass it back as `cursor`); None on the last page.
    next_cursor: str | None = None


#: What run lists (GET /api/runs, the runs page) sort by: `name` ascending, `-name` descending. Each sort has an
#: index that also holds `archived` and the tie-break (migrations 0007, 0012), so a sorted, filtered page, its
#: next page and its count read only index entries however many runs there are.
RUN_SORTS: dict[str, Any] = {
    "created": Run.id,  # ids grow with creation
    "name": Run.name,
    "status": Run.status,
    "method": Run.method,
    "train_loss": Run.final_train_loss,
    "eval_loss": Run.final_eval_loss,
    "disk": Run.disk_bytes,
}
SORT_CHOICES = tuple(choice for key in RUN_SORTS for choice in (key, f"-{key}"))


class InvalidCursor(ValueError):
    pass


#: The longest cursor encode_cursor makes: a 100-character name of 4-byte characters, the longest sort, a 64-bit id.
CURSOR_MAX_CHARS = 700


def encode_cursor(sort: str, value: Any, run_id: int) -> str:
    """An opaque position in a sorted list: after the run `run_id`, whose sort value is `value`."""
    raw = json.dumps([sort, value, run_id], separators=(",", ":"), ensure_ascii=False).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, sort: str) -> tuple[Any, int]:
    """(sort value, run id) of a cursor made for `sort`; InvalidCursor if it is not one."""
    try:
        made_for, value, run_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, TypeError) as exc:
        raise InvalidCursor("cursor is not one this server gave: use next_cursor from a list's answer") from exc
    if made_for != sort:
        raise InvalidCursor(f"cursor was made for sort={made_for}, not sort={sort}: start again without it")
    if not _is_int64(run_id) or not (value is None or isinstance(value, str | float) or _is_int64(value)):
        raise InvalidCursor("cursor is not one this server gave: use next_cursor from a list's answer")
    return value, run_id


def list_runs(
    session: Session,
    *,
    status: str | None = None,
    method: str | None = None,
    name: str | None = None,
    tag: str | None = None,
    archived: bool | None = False,
    sort: str = "-created",
    limit: int = 50,
    offset: int = 0,
    cursor: str | None = None,
) -> RunPage:
    """One page of runs, filtered (status, method, `name` containing a text, case-insensitive, a tag, archived or
    not: None for both) and sorted (a RUN_SORTS key; runs without a value last, ties newest first). A page starts
    at `offset` or, cheaper deep in a long list, at a `cursor` (a page's next_cursor); not both. The page's ids
    come from the indexes first, then only those rows are read: the runs' JSON columns (spec, details) never go
    through a sort."""
    column = RUN_SORTS.get(sort.removeprefix("-"))
    if column is None:
        raise ValueError(f"sort must be one of {', '.join(SORT_CHOICES)}")
    if cursor and offset:
        raise InvalidCursor("give cursor or offset, not both")
    after = decode_cursor(cursor, sort) if cursor else None
    if after and not _fits(after[0], column):
        raise InvalidCursor("cursor is not one this server gave: use next_cursor from a list's answer")
    conditions, counted = _filters(status, method, name, tag, archived, column, session.get_bind().dialect.name)
    ids = _page_ids(session, _Order(column, sort.startswith("-")), conditions, limit + 1, offset, after)
    more, ids = len(ids) > limit, ids[:limit]
    found = {run.id: run for run in session.scalars(select(Run).where(Run.id.in_(ids)))} if ids else {}
    items = [found[run_id] for run_id in ids]
    if not more and after is None and (items or not offset):
        total = offset + len(items)  # the last page: its rows are the rest of the list
    else:
        total = session.scalar(select(func.count()).select_from(Run).where(*counted)) or 0
    next_cursor = encode_cursor(sort, getattr(items[-1], column.key), items[-1].id) if more and items else None
    return RunPage(items=items, total=total, limit=limit, offset=offset, next_cursor=next_cursor)


def _is_int64(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63


def _fits(value: Any, column: Any) -> bool:
    """Whether a cursor's value can be compared with the sort column (a made-up cursor must not reach SQL as a
    string compared with a number)."""
    if value is None:
        return bool(column.nullable) and column is not Run.id
    if isinstance(value, bool):
        return False
    kind = column.type.python_type
    return isinstance(value, int | float) if kind is float else isinstance(value, kind)


#: PostgreSQL only (migration 0012): lower(name), stored. Not a model column: SQLite has none.
NAME_FOLDED = literal_column("runs.name_folded", String)


def name_contains(text: str, dialect: str) -> ColumnElement[bool]:
    """Run names containing `text`, in any case. SQLite's LIKE already ignores ASCII case (as its lower() folds
    only ASCII), and without lower() on each name a scan of 100,000 names costs 7 ms instead of 19. PostgreSQL
    compares the names lower-cased when written (`name_folded`, migration 0012: 12 ms instead of 27 for lower() on
    each, 35 for ILIKE), which its trigram index holds."""
    pattern = "%" + text.replace("/", "//").replace("%", "/%").replace("_", "/_") + "%"
    if dialect == "sqlite":
        return Run.name.like(pattern, escape="/")
    return NAME_FOLDED.like(func.lower(literal(pattern)), escape="/")


def _filters(
    status: str | None,
    method: str | None,
    name: str | None,
    tag: str | None,
    archived: bool | None,
    column: Any,
    dialect: str,
) -> tuple[list[ColumnElement[bool]], list[ColumnElement[bool]]]:
    """The page query's conditions and the count's."""
    conditions: list[ColumnElement[bool]] = []
    if status:
        conditions.append(Run.status == status)
    if method:
        conditions.append(Run.method == method)
    if archived is not None:
        conditions.append(Run.archived == archived)
    counted = list(conditions)
    if tag:
        tagged = has_tag(Run.tags, tag)
        counted.append(tagged)
        # A scan of the tags' index (migration 0012), not of the rows, each holding a spec and details.
        conditions.append(Run.id.in_(select(Run.id).where(tagged)))
    if name:
        matches = name_contains(name, dialect)
        counted.append(matches)
        # A loss sort's index holds the name: checked there. Otherwise as a subquery, a scan of the name index
        # alone (or PostgreSQL's trigram index), not of the table in id order, reading every row.
        covered = column.key in RUN_LOSS_SORT_INDEXES
        conditions.append(matches if covered else Run.id.in_(select(Run.id).where(matches)))
    return conditions, counted


@dataclass(frozen=True)
class _Order:
    column: Any
    descending: bool

    @property
    def nullable(self) -> bool:
        return bool(self.column.nullable) and self.column is not Run.id

    def by(self) -> list[Any]:
        if self.column is Run.id:
            return [Run.id.desc() if self.descending else Run.id.asc()]
        return [self.column.desc() if self.descending else self.column.asc(), Run.id.desc()]

    def after(self, value: Any, run_id: int) -> ColumnElement[bool]:
        """Rows sorted after (value, run_id), in the part of the list with values."""
        if self.column is Run.id:
            return Run.id < run_id if self.descending else Run.id > run_id
        if self.descending:
            return and_(self.column <= value, or_(self.column < value, Run.id < run_id))
        return and_(self.column >= value, or_(self.column > value, Run.id < run_id))


def _page_ids(
    session: Session,
    order: _Order,
    conditions: list[ColumnElement[bool]],
    limit: int,
    offset: int,
    after: tuple[Any, int] | None,
) -> list[int]:
    """The page's ids: first the runs with a sort value, then (a nullable sort) those without, newest first.
    Two queries rather than NULLS LAST, which neither SQLite nor PostgreSQL can read from an index both ways."""
    hint = RUN_LOSS_SORT_INDEXES.get(order.column.key)

    def ids(where: list[ColumnElement[bool]], by: list[Any], count: int, skip: int) -> list[int]:
        query = select(Run.id).where(*conditions, *where).order_by(*by).limit(count).offset(skip)
        if hint:
            # Without statistics SQLite picks the status or method index and then reads every matching row for
            # its loss; the covering index answers from itself (PostgreSQL's planner chooses well on its own).
            query = query.with_hint(Run, f"INDEXED BY {hint}", dialect_name="sqlite")
        return list(session.scalars(query))

    if not order.nullable:
        return ids([order.after(*after)] if after else [], order.by(), limit, offset)
    without = [order.column.is_(None)]
    if after and after[0] is None:  # the cursor is already among the runs without a value
        return ids([*without, Run.id < after[1]], [Run.id.desc()], limit, 0)
    valued = [order.column.is_not(None), *([order.after(*after)] if after else [])]
    found = ids(valued, order.by(), limit, offset)
    if len(found) == limit:
        return found
    skip = 0
    if offset and not found:  # the offset is past every run with a value: how far past?
        before = select(func.count()).select_from(Run).where(*conditions, order.column.is_not(None))
        if hint:
            before = before.with_hint(Run, f"INDEXED BY {hint}", dialect_name="sqlite")
        skip = max(0, offset - (session.scalar(before) or 0))
    return found + ids(without, [Run.id.desc()], limit - len(found), skip)
