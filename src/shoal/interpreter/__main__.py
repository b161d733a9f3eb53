"""``python -m shoal.interpreter``: serve the code interpreter (default 0.0.0.0:49999)."""

from __future__ import annotations

import logging

import uvicorn

from shoal.interpreter.app import create_app
from shoal.interpreter.config import Settings


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = Settings.from_env()
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                log_level="warning", timeout_keep_alive=30, timeout_graceful_shutdown=5,
                # httptools when the template has it (it does); the loop stays asyncio's,
                # which pyzmq's asyncio sockets are made for
                http="auto", loop="asyncio")


if __name__ == "__main__":
    main()
