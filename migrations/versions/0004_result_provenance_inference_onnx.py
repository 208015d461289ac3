"""result provenance, inference and onnx status

Every result records what produced it, the float model's and the artifact's inference speed,
and why its ONNX file is missing when it is. Older results get empty values.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 21:37:30.818586
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('result', schema=None) as batch_op:
        batch_op.add_column(sa.Column('provenance', sa.JSON(), nullable=False, server_default='{}'))
        batch_op.add_column(sa.Column('inference', sa.JSON(), nullable=False, server_default='{}'))
        batch_op.add_column(sa.Column('onnx_status', sa.Text(), nullable=False, server_default='written'))



def downgrade() -> None:
    with op.batch_alter_table('result', schema=None) as batch_op:
        batch_op.drop_column('onnx_status')
        batch_op.drop_column('inference')
        batch_op.drop_column('provenance')

