"""`python -m services.messaging`: run the messaging service until SIGTERM."""

from __future__ import annotations

import asyncio

from services.common.logging import configure_logging
from services.common.server import serve
from services.common.settings import load_settings
from services.messaging.bootstrap import build_messaging
from services.messaging.settings import MessagingSettings


def main() -> None:
    settings = load_settings(MessagingSettings)
    configure_logging(settings.service_name, settings.log_level)
    asyncio.run(serve(settings, build_messaging))  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
