"""The README's configuration tables name every environment variable the code reads (a setting
added without its line in the README fails here)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from services.common.settings import CommonSettings
from services.console.settings import ConsoleSettings
from services.decision.settings import DecisionSettings
from services.identity.settings import IdentitySettings
from services.messaging.settings import MessagingSettings
from services.profile.settings import ProfileSettings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


@pytest.mark.parametrize(
    "settings",
    [CommonSettings, IdentitySettings, ProfileSettings, DecisionSettings, MessagingSettings, ConsoleSettings],
)
def test_every_setting_is_in_the_readme(settings: type) -> None:
    variables = [field.metadata["env"] for field in dataclasses.fields(settings) if "env" in field.metadata]
    assert variables
    missing = [variable for variable in variables if f"`{variable}`" not in README]
    assert missing == []
