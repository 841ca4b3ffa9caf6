"""Whether a message may go out now: consent, daily frequency caps and quiet hours, all in the
person's local time (their time zone comes from their country).

`decide_send` is re-run when a deferred message falls due: the next local day has its own caps.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final
from zoneinfo import ZoneInfo

from services.messaging.domain.triggers import Channel

_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_ONE_MS: Final = dt.timedelta(milliseconds=1)

# One representative zone per country: a person's city is too noisy to pick among a country's
# zones, and the quiet hours are wide enough for the error (US: New York, 3 h off in California).
COUNTRY_TIME_ZONES: Final[Mapping[str, str]] = MappingProxyType(
    {
        # European Union
        "AT": "Europe/Vienna",
        "BE": "Europe/Brussels",
        "BG": "Europe/Sofia",
        "HR": "Europe/Zagreb",
        "CY": "Asia/Nicosia",
        "CZ": "Europe/Prague",
        "DK": "Europe/Copenhagen",
        "EE": "Europe/Tallinn",
        "FI": "Europe/Helsinki",
        "FR": "Europe/Paris",
        "DE": "Europe/Berlin",
        "GR": "Europe/Athens",
        "HU": "Europe/Budapest",
        "IE": "Europe/Dublin",
        "IT": "Europe/Rome",
        "LV": "Europe/Riga",
        "LT": "Europe/Vilnius",
        "LU": "Europe/Luxembourg",
        "MT": "Europe/Malta",
        "NL": "Europe/Amsterdam",
        "PL": "Europe/Warsaw",
        "PT": "Europe/Lisbon",
        "RO": "Europe/Bucharest",
        "SK": "Europe/Bratislava",
        "SI": "Europe/Ljubljana",
        "ES": "Europe/Madrid",
        "SE": "Europe/Stockholm",
        # Rest of Europe
        "GB": "Europe/London",
        "CH": "Europe/Zurich",
        "NO": "Europe/Oslo",
        "IS": "Atlantic/Reykjavik",
        "MC": "Europe/Monaco",
        # Elsewhere
        "US": "America/New_York",
        "CA": "America/Toronto",
        "MX": "America/Mexico_City",
        "BR": "America/Sao_Paulo",
        "AU": "Australia/Sydney",
        "NZ": "Pacific/Auckland",
        "JP": "Asia/Tokyo",
        "KR": "Asia/Seoul",
        "CN": "Asia/Shanghai",
        "HK": "Asia/Hong_Kong",
        "SG": "Asia/Singapore",
        "IN": "Asia/Kolkata",
        "AE": "Asia/Dubai",
        "IL": "Asia/Jerusalem",
        "TR": "Europe/Istanbul",
        "ZA": "Africa/Johannesburg",
        "MA": "Africa/Casablanca",
    }
)
_COUNTRY_ALIASES: Final = MappingProxyType({"UK": "GB", "EL": "GR"})  # EU usage (UK, EL) vs ISO 3166


def zone_for_country(country: str) -> ZoneInfo:
    """The representative zone of an ISO 3166 alpha-2 code (any case); UTC when unknown."""
    code = country.strip().upper()
    code = _COUNTRY_ALIASES.get(code, code)
    return ZoneInfo(COUNTRY_TIME_ZONES.get(code, "UTC"))


def _instant(time_ms: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(milliseconds=time_ms)


def _to_ms(moment: dt.datetime) -> int:
    return (moment - _EPOCH) // _ONE_MS


def local_time(time_ms: int, country: str) -> dt.datetime:
    """The person's wall-clock time at an instant (aware, in their country's zone)."""
    return _instant(time_ms).astimezone(zone_for_country(country))


def local_day(time_ms: int, country: str) -> dt.date:
    """The person's calendar day: what daily caps are counted per."""
    return local_time(time_ms, country).date()


# -------------------------------------------------------------------------------------- consent
class ConsentState(enum.Enum):
    UNKNOWN = 0
    GRANTED = 1
    DENIED = 2


@dataclass(frozen=True, slots=True)
class ConsentRules:
    """Channels on which a person who never answered may be messaged. Empty by default: under
    GDPR/ePrivacy marketing e-mail needs an opt-in (the soft opt-in for existing customers is the
    shop's legal call, so it is an explicit setting here), push needs the browser's or app's
    permission, and retargeting needs the advertising-cookie consent."""

    unknown_allowed: frozenset[Channel] = frozenset()


def consent_allows(consent: ConsentState, channel: Channel, rules: ConsentRules) -> bool:
    if consent is ConsentState.GRANTED:
        return True
    return consent is ConsentState.UNKNOWN and channel in rules.unknown_allowed


# --------------------------------------------------------------------------------- daily caps
@dataclass(frozen=True, slots=True)
class FrequencyCaps:
    """Messages per person, channel and local calendar day. A channel without a cap gets none:
    a channel added without thinking about its cap must not be unlimited."""

    per_day: Mapping[Channel, int] = field(
        default_factory=lambda: MappingProxyType({Channel.EMAIL: 2, Channel.PUSH: 3, Channel.RETARGETING: 10}),
        hash=False,
    )


def under_daily_cap(channel: Channel, sent_today: int, caps: FrequencyCaps) -> bool:
    """True when one more message fits in the day, given how many already went out that day."""
    return sent_today < caps.per_day.get(channel, 0)


# A day's counter lives this long after its last message: past any local day it counts.
CAP_COUNTER_TTL_S: Final = 2 * 86_400


def daily_cap_key(person_id: str, channel: Channel, day: dt.date) -> str:
    """What the messages of a person on a channel and local day are counted under."""
    return f"{person_id}:{channel.name}:{day.isoformat()}"


def local_days_possible(time_ms: int) -> list[dt.date]:
    """Every calendar day someone somewhere is in at this instant (zones run from UTC-12 to
    UTC+14): the person's local day is one of them, whatever their country. A sender reads the
    cap counters of all of them in the step that takes a delivery, before it knows the country."""
    first = (_instant(time_ms) - dt.timedelta(hours=12)).date()
    last = (_instant(time_ms) + dt.timedelta(hours=14)).date()
    return [first + dt.timedelta(days=offset) for offset in range((last - first).days + 1)]


def daily_cap_keys_alive(person_id: str, now_ms: int) -> list[str]:
    """Every cap counter of the person that can still exist now (to erase them without a scan):
    a counter outlives its last message by `CAP_COUNTER_TTL_S`, and a local day is at most a day
    off the UTC one (zones run from UTC-12 to UTC+14)."""
    today = _instant(now_ms).date()
    oldest = (_instant(now_ms) - dt.timedelta(seconds=CAP_COUNTER_TTL_S)).date() - dt.timedelta(days=1)
    days = [oldest + dt.timedelta(days=offset) for offset in range((today - oldest).days + 2)]
    return [daily_cap_key(person_id, channel, day) for channel in Channel for day in days]


# -------------------------------------------------------------------------------- quiet hours
@dataclass(frozen=True, slots=True)
class QuietHours:
    """Local hours without messages, [start, end); start > end wraps midnight, start == end
    means none. Retargeting is exempt by default: joining an audience interrupts nobody."""

    start: dt.time = dt.time(21, 0)
    end: dt.time = dt.time(8, 0)
    channels: frozenset[Channel] = frozenset({Channel.EMAIL, Channel.PUSH})


def in_quiet_hours(wall: dt.time, quiet_start: dt.time, quiet_end: dt.time) -> bool:
    if quiet_start == quiet_end:
        return False
    if quiet_start < quiet_end:
        return quiet_start <= wall < quiet_end
    return wall >= quiet_start or wall < quiet_end


def next_allowed_send_ms(now_ms: int, country: str, quiet_start: dt.time, quiet_end: dt.time) -> int:
    """`now_ms` outside the quiet hours of the person's zone, else the first instant after them:
    local `quiet_end` on the right day, as it happens in that zone (in a spring-forward gap, the
    moment the clocks jump; when the time occurs twice, the first occurrence not before now)."""
    zone = zone_for_country(country)
    local = _instant(now_ms).astimezone(zone)
    wall = local.time()
    if not in_quiet_hours(wall, quiet_start, quiet_end):
        return now_ms
    end_day = local.date()
    if quiet_start > quiet_end and wall >= quiet_start:
        end_day += dt.timedelta(days=1)  # the evening part: it ends tomorrow morning
    while True:
        allowed = _first_instant_at_wall_time(dt.datetime.combine(end_day, quiet_end), zone, now_ms)
        # A window between end and start that falls wholly in a spring-forward gap never opens
        # that night: the clocks jump from quiet to quiet. Then it is the next day's end.
        if not in_quiet_hours(_instant(allowed).astimezone(zone).time(), quiet_start, quiet_end):
            return allowed
        end_day += dt.timedelta(days=1)


def _first_instant_at_wall_time(wall: dt.datetime, zone: ZoneInfo, not_before_ms: int) -> int:
    """The first instant, not before `not_before_ms`, at which the zone's clock reads `wall` or
    later (for the next hours; zones change offset at most once in that span)."""
    earlier = _to_ms(wall.replace(tzinfo=zone, fold=0))
    later = _to_ms(wall.replace(tzinfo=zone, fold=1))
    exists = _instant(earlier).astimezone(zone).replace(tzinfo=None) == wall
    if exists:
        # Ambiguous in a fall-back night: fold 0 is the first time; it may already be past.
        first, second = sorted((earlier, later))
        return first if first >= not_before_ms else max(second, not_before_ms)
    # A spring-forward gap: `wall` never shows. Find the jump, between the two readings.
    low, high = min(earlier, later), max(earlier, later)
    while low < high:
        middle = (low + high) // 2
        if _instant(middle).astimezone(zone).replace(tzinfo=None) >= wall:
            high = middle
        else:
            low = middle + 1
    return max(low, not_before_ms)


# ------------------------------------------------------------------------------------ decision
class SkipReason(enum.Enum):
    NO_CONSENT = 1
    NO_ADDRESS = 2  # no e-mail address or push token to send to
    CAPPED = 3


@dataclass(frozen=True, slots=True)
class SendNow:
    pass


@dataclass(frozen=True, slots=True)
class DeferUntil:
    at_ms: int


@dataclass(frozen=True, slots=True)
class Skip:
    reason: SkipReason


SendDecision = SendNow | DeferUntil | Skip


@dataclass(frozen=True, slots=True)
class SendPolicy:
    consent: ConsentRules = field(default_factory=ConsentRules)
    caps: FrequencyCaps = field(default_factory=FrequencyCaps)
    quiet_hours: QuietHours = field(default_factory=QuietHours)


DEFAULT_SEND_POLICY: Final = SendPolicy()


def decide_send(
    channel: Channel,
    consent: ConsentState,
    sent_today: int,
    country: str,
    now_ms: int,
    policy: SendPolicy = DEFAULT_SEND_POLICY,
    *,
    reachable: bool = True,
) -> SendDecision:
    """Consent, then reachability, then today's cap, then quiet hours. `sent_today` counts this
    channel's messages on the person's current local day (`local_day`)."""
    if not consent_allows(consent, channel, policy.consent):
        return Skip(SkipReason.NO_CONSENT)
    if not reachable:
        return Skip(SkipReason.NO_ADDRESS)
    if not under_daily_cap(channel, sent_today, policy.caps):
        return Skip(SkipReason.CAPPED)
    quiet = policy.quiet_hours
    if channel in quiet.channels:
        allowed_at = next_allowed_send_ms(now_ms, country, quiet.start, quiet.end)
        if allowed_at > now_ms:
            return DeferUntil(allowed_at)
    return SendNow()
