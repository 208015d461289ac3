"""``python -m api``: migrate the database, serve the API, or run the whole product embedded."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys

from api.settings import Settings


def _serve(host: str, port: int) -> None:
    import uvicorn

    from api.main import create_app

    uvicorn.run(create_app(Settings()), host=host, port=port, log_level="info")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m api")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="upgrade the database to the newest revision")
    rev = sub.add_parser("revision", help="autogenerate a migration (read it before committing)")
    rev.add_argument("-m", "--message", required=True)
    for name, text in (
        ("serve", "serve the API"),
        ("embedded", "migrate, start one worker and serve the API"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    settings = Settings()

    if args.command == "migrate":
        from api.db import upgrade_to_head

        upgrade_to_head(settings)
        print(f"database at head: {settings.resolved_database_url}")
        return 0
    if args.command == "revision":
        from alembic import command

        from api.db import alembic_config

        command.revision(alembic_config(settings), message=args.message, autogenerate=True)
        return 0
    if args.command == "serve":
        _serve(args.host, args.port)
        return 0

    from api.db import upgrade_to_head

    upgrade_to_head(settings)
    worker = subprocess.Popen(
        [sys.executable, "-m", "worker"], env={**os.environ, "QS_WORKER_EXIT_WITH_PARENT": "1"}
    )
    print(
        f"quantization service: http://{args.host}:{args.port}/docs  (API under /api/v1; "
        f"data in {settings.data_dir.resolve()})",
        flush=True,
    )
    try:
        _serve(args.host, args.port)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
