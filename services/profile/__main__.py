"""`python -m services.profile`: run the profile service until SIGTERM."""

from __future__ import annotations

from services.common.server import run_service
from services.profile.bootstrap import build_profile
from services.profile.settings import ProfileSettings


def main() -> None:
    run_service(ProfileSettings, build_profile)


if __name__ == "__main__":
    main()
