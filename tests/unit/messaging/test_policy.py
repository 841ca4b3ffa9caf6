"""Send policy: consent per channel, daily caps per local day, quiet hours in the person's zone
(midnight wrap, DST gaps and repeated hours), and the decision combining them."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.messaging.domain.policy import (
    COUNTRY_TIME_ZONES,
    DEFAULT_SEND_POLICY,
    ConsentRules,
    ConsentState,
    DeferUntil,
    FrequencyCaps,
    QuietHours,
    SendNow,
    SendPolicy,
    Skip,
    SkipReason,
    consent_allows,
    daily_cap_key,
    daily_cap_keys_alive,
    decide_send,
    in_quiet_hours,
    local_day,
    local_days_possible,
    next_allowed_send_ms,
    under_daily_cap,
    zone_for_country,
)
from services.messaging.domain.triggers import Channel

NINE_PM, EIGHT_AM = dt.time(21, 0), dt.time(8, 0)
EU_COUNTRIES = (
    "AT",
    "BE",
    "BG",
    "HR",
    "CY",
    "CZ",
    "DK",
    "EE",
    "FI",
    "FR",
    "DE",
    "GR",
    "HU",
    "IE",
    "IT",
    "LV",
    "LT",
    "LU",
    "MT",
    "NL",
    "PL",
    "PT",
    "RO",
    "SK",
    "SI",
    "ES",
    "SE",
)


def ms(year: int, month: int, day: int, hour: int, minute: int, zone: str, fold: int = 0) -> int:
    moment = dt.datetime(year, month, day, hour, minute, tzinfo=ZoneInfo(zone), fold=fold)
    return int(moment.timestamp() * 1000)


def wall(time_ms: int, zone: str) -> dt.datetime:
    return dt.datetime.fromtimestamp(time_ms / 1000, ZoneInfo(zone)).replace(tzinfo=None)


# ------------------------------------------------------------------------------------- zones
def test_every_eu_country_and_the_big_markets_have_a_zone() -> None:
    for country in (*EU_COUNTRIES, "GB", "US", "CA", "AU", "JP", "CN", "IN", "BR"):
        assert country in COUNTRY_TIME_ZONES, country
        ZoneInfo(COUNTRY_TIME_ZONES[country])  # a real IANA zone


@pytest.mark.parametrize(
    ("country", "zone"),
    [
        ("FR", "Europe/Paris"),
        ("fr", "Europe/Paris"),
        (" us ", "America/New_York"),
        ("UK", "Europe/London"),
        ("GB", "Europe/London"),
        ("JP", "Asia/Tokyo"),
        ("", "UTC"),
        ("ZZ", "UTC"),
    ],
)
def test_zone_for_country(country: str, zone: str) -> None:
    assert zone_for_country(country).key == zone


def test_the_local_day_is_the_persons_calendar_day() -> None:
    late_evening_in_new_york = ms(2024, 3, 1, 22, 30, "America/New_York")
    assert local_day(late_evening_in_new_york, "US") == dt.date(2024, 3, 1)
    assert local_day(late_evening_in_new_york, "FR") == dt.date(2024, 3, 2)


# ----------------------------------------------------------------------------------- consent
@pytest.mark.parametrize("channel", list(Channel))
def test_by_default_every_channel_needs_granted_consent(channel: Channel) -> None:
    rules = ConsentRules()
    assert consent_allows(ConsentState.GRANTED, channel, rules)
    assert not consent_allows(ConsentState.UNKNOWN, channel, rules)
    assert not consent_allows(ConsentState.DENIED, channel, rules)


def test_a_channel_may_accept_unknown_consent_but_never_a_denial() -> None:
    soft_opt_in = ConsentRules(unknown_allowed=frozenset({Channel.EMAIL}))
    assert consent_allows(ConsentState.UNKNOWN, Channel.EMAIL, soft_opt_in)
    assert not consent_allows(ConsentState.UNKNOWN, Channel.PUSH, soft_opt_in)
    assert not consent_allows(ConsentState.DENIED, Channel.EMAIL, soft_opt_in)


# -------------------------------------------------------------------------------------- caps
@pytest.mark.parametrize(("channel", "limit"), [(Channel.EMAIL, 2), (Channel.PUSH, 3), (Channel.RETARGETING, 10)])
def test_default_daily_caps(channel: Channel, limit: int) -> None:
    caps = FrequencyCaps()
    assert under_daily_cap(channel, limit - 1, caps)
    assert not under_daily_cap(channel, limit, caps)


def test_a_channel_without_a_cap_is_not_unlimited() -> None:
    assert not under_daily_cap(Channel.PUSH, 0, FrequencyCaps(per_day={Channel.EMAIL: 5}))


# ------------------------------------------------------------------------------- quiet hours
@pytest.mark.parametrize(
    ("local", "expected"),
    [
        ((2024, 6, 10, 12, 0), (2024, 6, 10, 12, 0)),  # midday: now
        ((2024, 6, 10, 20, 59), (2024, 6, 10, 20, 59)),
        ((2024, 6, 10, 21, 0), (2024, 6, 11, 8, 0)),  # evening: tomorrow morning
        ((2024, 6, 10, 23, 45), (2024, 6, 11, 8, 0)),
        ((2024, 6, 11, 3, 0), (2024, 6, 11, 8, 0)),  # after midnight: this morning
        ((2024, 6, 11, 8, 0), (2024, 6, 11, 8, 0)),  # the end is not quiet
        ((2024, 12, 31, 22, 0), (2025, 1, 1, 8, 0)),  # across the year
    ],
)
def test_quiet_hours_in_paris(local: tuple[int, int, int, int, int], expected: tuple[int, int, int, int, int]) -> None:
    now = ms(*local, "Europe/Paris")
    assert next_allowed_send_ms(now, "FR", NINE_PM, EIGHT_AM) == ms(*expected, "Europe/Paris")


def test_quiet_hours_follow_the_persons_zone() -> None:
    now = ms(2024, 6, 10, 23, 0, "Europe/Paris")  # 17:00 in New York, 06:00 in Tokyo
    assert next_allowed_send_ms(now, "US", NINE_PM, EIGHT_AM) == now
    assert next_allowed_send_ms(now, "JP", NINE_PM, EIGHT_AM) == ms(2024, 6, 11, 8, 0, "Asia/Tokyo")


def test_the_night_the_clocks_go_forward_ends_at_local_eight() -> None:
    now = ms(2024, 3, 30, 23, 0, "Europe/Paris")  # CET; 08:00 next day is CEST
    assert next_allowed_send_ms(now, "FR", NINE_PM, EIGHT_AM) == ms(2024, 3, 31, 8, 0, "Europe/Paris")
    assert next_allowed_send_ms(now, "FR", NINE_PM, EIGHT_AM) - now == 8 * 3_600_000  # one hour shorter


def test_an_end_inside_the_spring_forward_gap_is_the_moment_the_clocks_jump() -> None:
    now = ms(2024, 3, 31, 1, 0, "Europe/Paris")
    allowed = next_allowed_send_ms(now, "FR", dt.time(0, 0), dt.time(2, 30))  # 02:30 never happens that night
    assert wall(allowed, "Europe/Paris") == dt.datetime(2024, 3, 31, 3, 0)
    assert allowed == ms(2024, 3, 31, 1, 0, "UTC")


def test_an_end_inside_the_repeated_hour_is_its_first_occurrence_not_before_now() -> None:
    first_pass = ms(2024, 10, 27, 1, 0, "Europe/Paris")
    end = dt.time(2, 30)
    assert next_allowed_send_ms(first_pass, "FR", dt.time(0, 0), end) == ms(2024, 10, 27, 2, 30, "Europe/Paris")
    second_pass = ms(2024, 10, 27, 2, 10, "Europe/Paris", fold=1)  # after the clocks went back
    assert next_allowed_send_ms(second_pass, "FR", dt.time(0, 0), end) == ms(
        2024, 10, 27, 2, 30, "Europe/Paris", fold=1
    )


def test_an_allowed_window_lost_in_the_spring_forward_gap_moves_to_the_next_night() -> None:
    # Quiet from 03:00 to 02:45: the only allowed quarter hour, 02:45-03:00, does not exist on
    # the night the clocks jump from 02:00 to 03:00.
    now = ms(2024, 3, 30, 22, 0, "Europe/Zagreb")
    allowed = next_allowed_send_ms(now, "HR", dt.time(3, 0), dt.time(2, 45))
    assert allowed == ms(2024, 4, 1, 2, 45, "Europe/Zagreb")


def test_equal_start_and_end_mean_no_quiet_hours() -> None:
    now = ms(2024, 6, 10, 3, 0, "Europe/Paris")
    assert next_allowed_send_ms(now, "FR", EIGHT_AM, EIGHT_AM) == now


def test_a_window_within_the_day() -> None:
    lunch_start, lunch_end = dt.time(12, 0), dt.time(14, 0)
    assert in_quiet_hours(dt.time(13, 0), lunch_start, lunch_end)
    assert not in_quiet_hours(dt.time(14, 0), lunch_start, lunch_end)
    assert not in_quiet_hours(dt.time(11, 59), lunch_start, lunch_end)
    now = ms(2024, 6, 10, 12, 30, "Europe/Berlin")
    assert next_allowed_send_ms(now, "DE", lunch_start, lunch_end) == ms(2024, 6, 10, 14, 0, "Europe/Berlin")


quarter_hours = st.builds(dt.time, st.integers(0, 23), st.sampled_from([0, 15, 30, 45]))


@settings(max_examples=300, deadline=None)
@given(
    now_ms=st.integers(ms(1995, 1, 1, 0, 0, "UTC"), ms(2045, 1, 1, 0, 0, "UTC")),
    country=st.sampled_from(sorted(COUNTRY_TIME_ZONES)),
    quiet_start=quarter_hours,
    quiet_end=quarter_hours,
)
def test_the_allowed_time_is_never_before_now_never_quiet_and_the_first_one(
    now_ms: int, country: str, quiet_start: dt.time, quiet_end: dt.time
) -> None:
    zone = COUNTRY_TIME_ZONES[country]
    allowed = next_allowed_send_ms(now_ms, country, quiet_start, quiet_end)
    assert allowed >= now_ms
    assert not in_quiet_hours(wall(allowed, zone).time(), quiet_start, quiet_end)
    assert allowed - now_ms <= 25 * 3_600_000
    if allowed > now_ms:  # the millisecond before was still quiet: nothing earlier was allowed
        assert in_quiet_hours(wall(now_ms, zone).time(), quiet_start, quiet_end)
        assert in_quiet_hours(wall(allowed - 1, zone).time(), quiet_start, quiet_end)


# ---------------------------------------------------------------------------------- decision
MIDDAY_PARIS = ms(2024, 6, 10, 12, 0, "Europe/Paris")
NIGHT_PARIS = ms(2024, 6, 10, 23, 0, "Europe/Paris")


def test_a_consented_reachable_uncapped_person_at_midday_gets_it_now() -> None:
    assert decide_send(Channel.EMAIL, ConsentState.GRANTED, 0, "FR", MIDDAY_PARIS) == SendNow()


@pytest.mark.parametrize(
    ("consent", "sent_today", "reachable", "reason"),
    [
        (ConsentState.DENIED, 0, True, SkipReason.NO_CONSENT),
        (ConsentState.UNKNOWN, 0, True, SkipReason.NO_CONSENT),
        (ConsentState.DENIED, 5, False, SkipReason.NO_CONSENT),  # consent is checked first
        (ConsentState.GRANTED, 0, False, SkipReason.NO_ADDRESS),
        (ConsentState.GRANTED, 2, True, SkipReason.CAPPED),
    ],
)
def test_skips(consent: ConsentState, sent_today: int, reachable: bool, reason: SkipReason) -> None:
    decision = decide_send(Channel.EMAIL, consent, sent_today, "FR", NIGHT_PARIS, reachable=reachable)
    assert decision == Skip(reason)


def test_at_night_email_and_push_wait_for_the_morning_but_retargeting_does_not() -> None:
    morning = ms(2024, 6, 11, 8, 0, "Europe/Paris")
    assert decide_send(Channel.EMAIL, ConsentState.GRANTED, 0, "FR", NIGHT_PARIS) == DeferUntil(morning)
    assert decide_send(Channel.PUSH, ConsentState.GRANTED, 0, "FR", NIGHT_PARIS) == DeferUntil(morning)
    assert decide_send(Channel.RETARGETING, ConsentState.GRANTED, 0, "FR", NIGHT_PARIS) == SendNow()


def test_a_custom_policy_changes_consent_caps_and_quiet_hours() -> None:
    policy = SendPolicy(
        consent=ConsentRules(unknown_allowed=frozenset({Channel.EMAIL})),
        caps=FrequencyCaps(per_day={Channel.EMAIL: 5}),
        quiet_hours=QuietHours(start=dt.time(23, 30), end=dt.time(7, 0)),
    )
    assert decide_send(Channel.EMAIL, ConsentState.UNKNOWN, 4, "FR", NIGHT_PARIS, policy) == SendNow()
    assert policy != DEFAULT_SEND_POLICY


@settings(max_examples=200, deadline=None)
@given(
    now_ms=st.integers(min_value=1_600_000_000_000, max_value=2_000_000_000_000),
    sent_ago_ms=st.integers(min_value=0, max_value=2 * 86_400_000),
    country=st.sampled_from([*sorted(COUNTRY_TIME_ZONES), "", "ZZ"]),
    channel=st.sampled_from(list(Channel)),
)
def test_erasure_finds_every_cap_counter_that_can_still_exist(
    now_ms: int, sent_ago_ms: int, country: str, channel: Channel
) -> None:
    # A counter written `sent_ago_ms` ago (it lives two days after its last message) is among the
    # keys an erasure deletes, whatever the person's zone.
    written = daily_cap_key("p1", channel, local_day(now_ms - sent_ago_ms, country))
    alive = daily_cap_keys_alive("p1", now_ms)
    assert written in alive
    assert len(alive) == len(set(alive)) == 5 * len(Channel)
    assert all(key.startswith("p1:") for key in alive)


@settings(max_examples=300, deadline=None)
@given(
    now_ms=st.integers(min_value=1_600_000_000_000, max_value=2_000_000_000_000),
    country=st.sampled_from([*sorted(COUNTRY_TIME_ZONES), "", "ZZ"]),
)
def test_the_persons_local_day_is_among_the_days_a_sender_reads_the_caps_of(now_ms: int, country: str) -> None:
    # A sender reads the counters of these days before it knows the person's country.
    possible = local_days_possible(now_ms)
    assert local_day(now_ms, country) in possible
    assert 2 <= len(possible) <= 3
    assert possible == sorted(set(possible))


def test_at_utc_noon_the_day_before_and_the_day_after_are_both_somewhere() -> None:
    assert local_days_possible(ms(2024, 3, 1, 11, 0, "UTC")) == [
        dt.date(2024, 2, 29),
        dt.date(2024, 3, 1),
        dt.date(2024, 3, 2),
    ]
    assert local_days_possible(ms(2024, 3, 1, 0, 30, "UTC")) == [dt.date(2024, 2, 29), dt.date(2024, 3, 1)]
