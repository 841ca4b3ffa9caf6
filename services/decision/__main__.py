"""`python -m services.decision`: run the decision service until SIGTERM."""

from __future__ import annotations

from services.common.server import run_service
from services.decision.bootstrap import build_decision
from services.decision.settings import DecisionSettings


def main() -> None:
    run_service(DecisionSettings, build_decision)


if __name__ == "__main__":
    main()
