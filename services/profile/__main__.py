"""`python -m services.profile`: run the profile service until SIGTERM."""

from __future__ import annotations

import asyncio

from services.common.logging import configure_logging
from services.common.server import serve
from services.common.settings import load_settings
from services.profile.bootstrap import build_profile
from services.profile.settings import ProfileSettings


def main() -> None:
    settings = load_settings(ProfileSettings)
    configure_logging(settings.service_name, settings.log_level)
    asyncio.run(serve(settings, build_profile))  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
