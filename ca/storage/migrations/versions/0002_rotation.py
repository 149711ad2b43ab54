"""Rotation: when each authority was made the signer, the CA's lifecycle events, and an index
to tell whether a pod holds a newer certificate.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_TIME = sa.DateTime(timezone=True)
AUTO_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("authorities") as batch:
        batch.add_column(sa.Column("activated_at", UTC_TIME, nullable=True))
    # Before this revision the newest ACTIVE authority with a key signed: keep it so.
    op.execute(
        "UPDATE authorities SET activated_at = created_at "
        "WHERE state = 'active' AND encrypted_key IS NOT NULL"
    )
    op.create_table(
        "ca_events",
        sa.Column("id", AUTO_ID, autoincrement=True, nullable=False),
        sa.Column("at", UTC_TIME, nullable=False),
        sa.Column("actor", sa.String(length=255), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("authority_id", sa.String(length=32), nullable=True),
        sa.Column("role", sa.String(length=16), nullable=True),
        sa.Column("from_state", sa.String(length=16), nullable=True),
        sa.Column("to_state", sa.String(length=16), nullable=True),
        sa.Column("bundle_sequence", sa.BigInteger(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_ca_events"),
    )
    op.create_index("ix_ca_events_at", "ca_events", ["at"])
    op.create_index("ix_issued_certs_pod_uid_issued_at", "issued_certs", ["pod_uid", "issued_at"])


def downgrade() -> None:
    op.drop_index("ix_issued_certs_pod_uid_issued_at", table_name="issued_certs")
    op.drop_index("ix_ca_events_at", table_name="ca_events")
    op.drop_table("ca_events")
    with op.batch_alter_table("authorities") as batch:
        batch.drop_column("activated_at")
