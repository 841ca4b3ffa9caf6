"""`python -m services.decision`: run the decision service until SIGTERM."""

from __future__ import annotations

import asyncio

from services.common.logging import configure_logging
from services.common.server import serve
from services.common.settings import load_settings
from services.decision.bootstrap import build_decision
from services.decision.settings import DecisionSettings


def main() -> None:
    settings = load_settings(DecisionSettings)
    configure_logging(settings.service_name, settings.log_level)
    asyncio.run(serve(settings, build_decision))  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
