"""`python -m services.identity`: run the identity service until SIGTERM."""

from __future__ import annotations

from services.common.server import run_service
from services.identity.bootstrap import build_identity
from services.identity.settings import IdentitySettings


def main() -> None:
    run_service(IdentitySettings, build_identity)


if __name__ == "__main__":
    main()
