"""accuracy-target parent jobs

A job may be the parent of a search over a method's size knob (`target`), its children ordinary
jobs (`parent_id`); deleting the parent deletes them.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 21:59:15.129972
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.add_column(sa.Column('parent_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('target', sa.JSON(), nullable=True))
        batch_op.create_index(batch_op.f('ix_job_parent_id'), ['parent_id'], unique=False)
        batch_op.create_foreign_key(batch_op.f('fk_job_parent_id_job'), 'job', ['parent_id'], ['id'], ondelete='CASCADE')



def downgrade() -> None:
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_job_parent_id_job'), type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_job_parent_id'))
        batch_op.drop_column('target')
        batch_op.drop_column('parent_id')

