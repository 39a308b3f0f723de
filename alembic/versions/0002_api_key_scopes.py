"""API key scopes: allowed models, per-key rate limit, monthly spend limit.

All three are nullable, and NULL keeps today's behaviour (every model, the default
`RATE_LIMIT_REQUESTS_PER_MINUTE`, no monthly cap), so existing keys are unchanged.

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-15
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("allowed_models", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("rate_limit_rpm", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("monthly_spend_limit_nusd", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("monthly_spend_limit_nusd")
        batch.drop_column("rate_limit_rpm")
        batch.drop_column("allowed_models")
