"""`python -m services.messaging`: run the messaging service until SIGTERM."""

from __future__ import annotations

from services.common.server import run_service
from services.messaging.bootstrap import build_messaging
from services.messaging.settings import MessagingSettings


def main() -> None:
    run_service(MessagingSettings, build_messaging)


if __name__ == "__main__":
    main()
