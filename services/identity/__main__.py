"""`python -m services.identity`: run the identity service until SIGTERM."""

from __future__ import annotations

import asyncio

from services.common.logging import configure_logging
from services.common.server import serve
from services.common.settings import load_settings
from services.identity.bootstrap import build_identity
from services.identity.settings import IdentitySettings


def main() -> None:
    settings = load_settings(IdentitySettings)
    configure_logging(settings.service_name, settings.log_level)
    asyncio.run(serve(settings, build_identity))  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
