"""Database rows the tests that talk to the database directly need: a user and a model row
(LeNet5 on 1x28x28 images) whose blob is never read."""

from __future__ import annotations

import secrets

from sqlalchemy.orm import Session

from api.models import Model, User


def user_and_model(s: Session) -> tuple[User, Model]:
    """A new user (unique name) owning a new LeNet5 model row, flushed (ids set), not committed."""
    user = User(name=f"u-{secrets.token_hex(4)}", password_hash="x")
    s.add(user)
    s.flush()
    model = Model(
        owner_id=user.id,
        name="m",
        arch="lenet5",
        num_classes=10,
        in_channels=1,
        input_height=28,
        input_width=28,
        num_params=1,
        size_bytes=1,
        sha256="0" * 64,
        blob_key="models/" + "0" * 32,
    )
    s.add(model)
    s.flush()
    return user, model
