"""memory admission: estimates and worker devices; deterministic runs

Each job records the peak memory it was estimated to need when it was admitted; each worker
process reports its device and that device's memory (`worker_device`), which admission reads.
A job may ask for deterministic algorithms (`deterministic`).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26 00:01:11.692458
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('worker_device',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('host', sa.String(length=255), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=False),
    sa.Column('device', sa.String(length=64), nullable=False),
    sa.Column('device_name', sa.String(length=255), nullable=False),
    sa.Column('memory_bytes', sa.BigInteger(), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('seen_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_worker_device')),
    sa.UniqueConstraint('host', 'pid', name=op.f('uq_worker_device_host'))
    )
    with op.batch_alter_table('worker_device', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_worker_device_seen_at'), ['seen_at'], unique=False)

    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.add_column(sa.Column('memory_estimate_bytes', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('deterministic', sa.Boolean(), server_default=sa.false(), nullable=False))



def downgrade() -> None:
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.drop_column('deterministic')
        batch_op.drop_column('memory_estimate_bytes')

    with op.batch_alter_table('worker_device', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_worker_device_seen_at'))

    op.drop_table('worker_device')
