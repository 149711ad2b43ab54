"""Initial schema: CA state, authorities, issuance ledger.

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_TIME = sa.DateTime(timezone=True)
AUTO_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "ca_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("trust_domain", sa.String(length=255), nullable=False),
        sa.Column("kek_id", sa.String(length=32), nullable=False),
        sa.Column("bundle_sequence", sa.BigInteger(), nullable=False),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.Column("updated_at", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_ca_state"),
    )
    op.create_table(
        "authorities",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("parent_id", sa.String(length=32), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("key_type", sa.String(length=32), nullable=False),
        sa.Column("fingerprint_sha256", sa.String(length=64), nullable=False),
        sa.Column("certificate_pem", sa.Text(), nullable=False),
        sa.Column("chain_pem", sa.Text(), nullable=False),
        sa.Column("encrypted_key", sa.LargeBinary(), nullable=True),
        sa.Column("not_before", UTC_TIME, nullable=False),
        sa.Column("not_after", UTC_TIME, nullable=False),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.Column("created_by", sa.String(length=255), nullable=False),
        sa.Column("updated_at", UTC_TIME, nullable=False),
        sa.Column("updated_by", sa.String(length=255), nullable=False),
        sa.ForeignKeyConstraint(
            ["parent_id"], ["authorities.id"], name="fk_authorities_parent_id_authorities"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_authorities"),
    )
    op.create_index("ix_authorities_state", "authorities", ["state"])
    op.create_table(
        "issued_certs",
        sa.Column("serial", sa.String(length=40), nullable=False),
        sa.Column("spiffe_id", sa.String(length=2048), nullable=False),
        sa.Column("namespace", sa.String(length=63), nullable=True),
        sa.Column("service_account", sa.String(length=253), nullable=True),
        sa.Column("pod_name", sa.String(length=253), nullable=True),
        sa.Column("pod_uid", sa.String(length=64), nullable=True),
        sa.Column("issuer_key_id", sa.String(length=32), nullable=False),
        sa.Column("not_before", UTC_TIME, nullable=False),
        sa.Column("not_after", UTC_TIME, nullable=False),
        sa.Column("cert_sha256", sa.String(length=64), nullable=False),
        sa.Column("public_key_sha256", sa.String(length=64), nullable=False),
        sa.Column("requested_ttl_seconds", sa.BigInteger(), nullable=True),
        sa.Column("requester", sa.String(length=255), nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("issued_at", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("serial", name="pk_issued_certs"),
    )
    op.create_index(
        "ix_issued_certs_spiffe_id_issued_at", "issued_certs", ["spiffe_id", "issued_at"]
    )
    op.create_index("ix_issued_certs_ns_issued_at", "issued_certs", ["namespace", "issued_at"])
    op.create_index(
        "ix_issued_certs_ns_sa_issued_at",
        "issued_certs",
        ["namespace", "service_account", "issued_at"],
    )
    op.create_index(
        "ix_issued_certs_issuer_issued_at", "issued_certs", ["issuer_key_id", "issued_at"]
    )
    op.create_index(
        "ix_issued_certs_not_after_issuer", "issued_certs", ["not_after", "issuer_key_id"]
    )
    op.create_index("ix_issued_certs_issued_at", "issued_certs", ["issued_at"])
    op.create_table(
        "denied_requests",
        sa.Column("id", AUTO_ID, autoincrement=True, nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("error_type", sa.String(length=64), nullable=False),
        sa.Column("requester", sa.String(length=255), nullable=False),
        sa.Column("spiffe_id", sa.String(length=2048), nullable=True),
        sa.Column("namespace", sa.String(length=63), nullable=True),
        sa.Column("service_account", sa.String(length=253), nullable=True),
        sa.Column("pod_name", sa.String(length=253), nullable=True),
        sa.Column("pod_uid", sa.String(length=64), nullable=True),
        sa.Column("requested_ttl_seconds", sa.BigInteger(), nullable=True),
        sa.Column("denied_at", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_denied_requests"),
    )
    op.create_index("ix_denied_requests_denied_at", "denied_requests", ["denied_at"])
    op.create_index(
        "ix_denied_requests_spiffe_id_denied_at", "denied_requests", ["spiffe_id", "denied_at"]
    )
    op.create_index(
        "ix_denied_requests_ns_sa_denied_at",
        "denied_requests",
        ["namespace", "service_account", "denied_at"],
    )
    op.create_index("ix_denied_requests_request_id", "denied_requests", ["request_id"])


def downgrade() -> None:
    op.drop_table("denied_requests")
    op.drop_table("issued_certs")
    op.drop_index("ix_authorities_state", table_name="authorities")
    op.drop_table("authorities")
    op.drop_table("ca_state")
