"""Decision's visitor facts are reused with the profile they came from, for a few seconds only."""

from __future__ import annotations

from services.decision.domain.visitor import VISITOR_REUSE_MS, visitor_of
from services.profile.domain.state import CartLineState, ProfileState
from services.profile.domain.view import NO_RFM, PriceBands
from services.profile.live import LiveProfile

MINUTE = 60_000
T0 = 1_700_000_000_000
HALF_LIFE = 7 * 24 * 60 * MINUTE
ABANDONED_AFTER = 30 * MINUTE


def carted_at(at_ms: int) -> LiveProfile:
    state = ProfileState("person", event_count=1, cart_changed_ms=at_ms)
    state.cart["P1"] = CartLineState(1, 90.0, "Crew neck", "Knitwear", "Brand", "EUR")
    return LiveProfile(state, {}, PriceBands({}), NO_RFM)


def test_the_same_profile_read_again_soon_gives_the_same_facts() -> None:
    live = carted_at(T0)

    first = visitor_of(live, T0 + MINUTE, HALF_LIFE, ABANDONED_AFTER)

    assert visitor_of(live, T0 + MINUTE + VISITOR_REUSE_MS - 1, HALF_LIFE, ABANDONED_AFTER) is first
    assert first.cart_product_ids == ("P1",) and not first.cart_abandoned


def test_facts_older_than_the_reuse_span_are_computed_again() -> None:
    live = carted_at(T0)
    before = visitor_of(live, T0 + ABANDONED_AFTER - 1000, HALF_LIFE, ABANDONED_AFTER)

    after = visitor_of(live, T0 + ABANDONED_AFTER + VISITOR_REUSE_MS, HALF_LIFE, ABANDONED_AFTER)

    assert not before.cart_abandoned and after.cart_abandoned


def test_a_profile_read_anew_gets_its_own_facts() -> None:
    first = visitor_of(carted_at(T0), T0 + MINUTE, HALF_LIFE, ABANDONED_AFTER)

    emptied = LiveProfile(
        ProfileState("person", event_count=2, cart_changed_ms=T0 + MINUTE), {}, PriceBands({}), NO_RFM
    )

    assert visitor_of(emptied, T0 + MINUTE, HALF_LIFE, ABANDONED_AFTER).cart_product_ids == ()
    assert first.cart_product_ids == ("P1",)


def test_a_clock_that_went_back_does_not_reuse_facts_from_the_future() -> None:
    live = carted_at(T0)
    later = visitor_of(live, T0 + ABANDONED_AFTER + MINUTE, HALF_LIFE, ABANDONED_AFTER)

    earlier = visitor_of(live, T0 + MINUTE, HALF_LIFE, ABANDONED_AFTER)

    assert later.cart_abandoned and not earlier.cart_abandoned
