"""activities.dedupe_key is the activity's identity: name + place (the address, else the page's coordinates), the
text whose hash is the activity id (issue 27 item 1). Rows stored under the old key (name + address only) are
re-keyed where the two differ, i.e. rows without an address that carry the page's coordinates.

Such a row may hold another place's content under its id (before this, two same-named coordinate-only places
shared one key and the later import overwrote the earlier one's row): its id is recomputed from what it holds, so
id, key and content agree again and a re-import of either place updates its own row or adds it, never
duplicating or colliding. Rows with an address keep their key, which was already their identity.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07
"""
import hashlib

import sqlalchemy as sa
from alembic import op

# The ids were made with this normalization; the migration must key rows exactly as the import now does.
from harvest.extract.text import normalize_key

revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None

_activities = sa.table(
    'activities', sa.column('id', sa.String), sa.column('dedupe_key', sa.Text), sa.column('name', sa.Text),
    sa.column('formatted_address', sa.Text), sa.column('latitude', sa.Float), sa.column('longitude', sa.Float),
)


def _identity(name: str, latitude: float, longitude: float) -> tuple[str, str]:
    """(dedupe_key, id) of an activity located only by the page's coordinates (harvest.standardize.standardizer:
    identity_key, coordinates_place, activity_id), frozen here."""
    key = f"{normalize_key(name)}|{normalize_key(f'{latitude:.5f},{longitude:.5f}')}"
    return key, hashlib.sha256(key.encode('utf-8')).hexdigest()[:32]


_COMMENT = ("The activity's identity: normalized name + place (the address, else the page's coordinates); "
            "the id is its hash.")
_OLD_COMMENT = "Normalized name + formatted address: the original design's dedupe rule."


def _comment(comment: str, existing: str) -> None:
    if op.get_bind().dialect.name == 'postgresql':  # SQLite keeps no comments
        op.alter_column('activities', 'dedupe_key', comment=comment, existing_comment=existing,
                        existing_type=sa.Text(), existing_nullable=False)


def upgrade() -> None:
    _comment(_COMMENT, _OLD_COMMENT)
    connection = op.get_bind()
    table = _activities
    located = connection.execute(
        sa.select(table.c.id, table.c.name, table.c.latitude, table.c.longitude).where(
            sa.or_(table.c.formatted_address.is_(None), table.c.formatted_address == ''),
            table.c.latitude.is_not(None), table.c.longitude.is_not(None),
        )
    ).all()
    ids = {row.id for row in connection.execute(sa.select(table.c.id))}
    for row in located:
        key, identifier = _identity(row.name, row.latitude, row.longitude)
        if identifier != row.id and identifier in ids:
            continue  # cannot happen (one row per old key); never collide, leave the row as it was
        connection.execute(
            table.update().where(table.c.id == row.id).values(dedupe_key=key, id=identifier)
        )
        ids.discard(row.id)
        ids.add(identifier)


def downgrade() -> None:
    # The old key (name + address) is not unique across coordinate-only places: a downgrade keeps one row per
    # old key (the most recently written) and deletes the others, as the old import would have overwritten them.
    _comment(_OLD_COMMENT, _COMMENT)
    connection = op.get_bind()
    table = _activities
    rows = connection.execute(
        sa.text("SELECT id, dedupe_key, name, formatted_address FROM activities ORDER BY updated_at DESC, id")
    ).all()
    seen: set[str] = set()
    deleted, rekeyed = [], []
    for row in rows:
        old = f"{normalize_key(row.name)}|{normalize_key(row.formatted_address)}"
        if old in seen:
            deleted.append(row.id)
        elif old != row.dedupe_key:
            rekeyed.append((row.id, old))
        seen.add(old)
    for identifier in deleted:  # first, so that no key is held twice on the way
        connection.execute(table.delete().where(table.c.id == identifier))
    for identifier, old in rekeyed:
        connection.execute(table.update().where(table.c.id == identifier).values(dedupe_key=old))
