"""Trigger rules: which instances an event schedules, their idempotency keys, the facts read from
a folded profile, and the re-check at send time that cancels what no longer applies."""

from __future__ import annotations

from dataclasses import replace

import pytest

from services.messaging.domain.triggers import (
    DAY_MS,
    DEFAULT_RULES,
    HOUR_MS,
    MINUTE_MS,
    Channel,
    PersonFacts,
    ProfileEventSummary,
    TriggerInstance,
    TriggerKind,
    TriggerRule,
    new_arrivals_trigger,
    person_facts,
    still_due,
    triggers_for_event,
)
from services.profile.domain.events import Context, EventKind, Order, OrderLine, Product, TrackedEvent
from services.profile.domain.folding import FoldRules, fold

PERSON = "0123456789abcdef0123456789abcdef"
T0 = 1_700_000_000_000  # 2023-11-14T22:13:20Z


def summary(kind: str, time_ms: int = T0, **fields: object) -> ProfileEventSummary:
    return ProfileEventSummary(kind=kind, person_id=PERSON, time_ms=time_ms, **fields)  # type: ignore[arg-type]


def by_kind(instances: tuple[TriggerInstance, ...]) -> dict[TriggerKind, TriggerInstance]:
    return {instance.kind: instance for instance in instances}


def cart_facts(*products: str, changed_ms: int = T0, **fields: object) -> PersonFacts:
    values: dict[str, object] = {
        "person_id": PERSON,
        "cart_product_ids": tuple(sorted(products)),
        "cart_changed_ms": changed_ms,
        "visit_started_ms": changed_ms,
        "last_on_site_ms": changed_ms,
    }
    values.update(fields)
    return PersonFacts(**values)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------ defaults
def test_default_rules_match_the_documented_e_commerce_defaults() -> None:
    cart = DEFAULT_RULES[TriggerKind.ABANDONED_CART]
    assert cart.delay_ms == 60 * MINUTE_MS
    assert cart.channels == (Channel.EMAIL, Channel.PUSH, Channel.RETARGETING)
    browse = DEFAULT_RULES[TriggerKind.BROWSE_ABANDONMENT]
    assert (browse.delay_ms, browse.browse_min_views, browse.channels) == (2 * HOUR_MS, 3, (Channel.EMAIL,))
    assert DEFAULT_RULES[TriggerKind.POST_PURCHASE].delay_ms == 3 * DAY_MS
    assert DEFAULT_RULES[TriggerKind.WELCOME].delay_ms == 0
    assert DEFAULT_RULES[TriggerKind.WIN_BACK].delay_ms == 30 * DAY_MS
    assert DEFAULT_RULES[TriggerKind.NEW_ARRIVALS].channels == (Channel.EMAIL, Channel.PUSH)
    assert set(DEFAULT_RULES) == set(TriggerKind)
    assert all(rule.enabled and rule.kind is kind for kind, rule in DEFAULT_RULES.items())


@pytest.mark.parametrize(
    "overrides",
    [{"delay_ms": -1}, {"channels": ()}, {"channels": (Channel.EMAIL, Channel.EMAIL)}, {"browse_min_views": 0}],
)
def test_a_rule_that_cannot_work_is_refused(overrides: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="WELCOME"):
        TriggerRule(TriggerKind.WELCOME, **overrides)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------- scheduling
def test_adding_to_the_cart_schedules_an_abandoned_cart_an_hour_after_the_change() -> None:
    facts = cart_facts("sku-2", "sku-1")
    cart = by_kind(triggers_for_event(summary("ADD_TO_CART", product_id="sku-2"), facts))[TriggerKind.ABANDONED_CART]
    assert cart.due_at_ms == T0 + 60 * MINUTE_MS
    assert cart.anchor_ms == T0
    assert cart.product_ids == ("sku-1", "sku-2")
    assert cart.channels == (Channel.EMAIL, Channel.PUSH, Channel.RETARGETING)
    assert cart.idempotency_key.startswith("ABANDONED_CART:")


def test_the_same_cart_contents_give_the_same_key_and_other_contents_another() -> None:
    first = by_kind(triggers_for_event(summary("ADD_TO_CART"), cart_facts("a", "b")))[TriggerKind.ABANDONED_CART]
    replayed = by_kind(triggers_for_event(summary("ADD_TO_CART", T0 + 5), cart_facts("b", "a", changed_ms=T0 + 5)))
    other = by_kind(triggers_for_event(summary("ADD_TO_CART"), cart_facts("a", "b", "c")))
    assert replayed[TriggerKind.ABANDONED_CART].idempotency_key == first.idempotency_key
    assert other[TriggerKind.ABANDONED_CART].idempotency_key != first.idempotency_key


def test_keys_do_not_collide_when_parts_are_split_differently() -> None:
    one = by_kind(triggers_for_event(summary("ADD_TO_CART"), cart_facts("ab", "c")))[TriggerKind.ABANDONED_CART]
    two = by_kind(triggers_for_event(summary("ADD_TO_CART"), cart_facts("a", "bc")))[TriggerKind.ABANDONED_CART]
    assert one.idempotency_key != two.idempotency_key


def test_emptying_the_cart_schedules_no_reminder() -> None:
    scheduled = by_kind(triggers_for_event(summary("REMOVE_FROM_CART", product_id="a"), cart_facts()))
    assert TriggerKind.ABANDONED_CART not in scheduled


def test_the_third_view_of_an_uncarted_product_schedules_browse_abandonment_for_the_day() -> None:
    facts = PersonFacts(PERSON, product_view_counts={"sku-9": 3}, visit_started_ms=T0)
    browse = by_kind(triggers_for_event(summary("PRODUCT_VIEW", product_id="sku-9"), facts))
    instance = browse[TriggerKind.BROWSE_ABANDONMENT]
    assert instance.due_at_ms == T0 + 2 * HOUR_MS
    assert instance.product_ids == ("sku-9",)
    later_that_day = triggers_for_event(
        summary("PRODUCT_VIEW", T0 + HOUR_MS, product_id="sku-9"),
        replace(facts, product_view_counts={"sku-9": 4}),
    )
    next_day = triggers_for_event(summary("PRODUCT_VIEW", T0 + DAY_MS, product_id="sku-9"), facts)
    assert by_kind(later_that_day)[TriggerKind.BROWSE_ABANDONMENT].idempotency_key == instance.idempotency_key
    assert by_kind(next_day)[TriggerKind.BROWSE_ABANDONMENT].idempotency_key != instance.idempotency_key


@pytest.mark.parametrize(
    "facts",
    [
        PersonFacts(PERSON, product_view_counts={"sku-9": 2}),
        PersonFacts(PERSON, product_view_counts={"sku-9": 5}, cart_product_ids=("sku-9",)),
        PersonFacts(PERSON, product_view_counts={"sku-9": 5}, purchased_product_ids=frozenset({"sku-9"})),
    ],
    ids=["too-few-views", "in-cart", "bought"],
)
def test_browse_abandonment_needs_enough_views_of_a_product_neither_carted_nor_bought(facts: PersonFacts) -> None:
    scheduled = triggers_for_event(summary("PRODUCT_VIEW", product_id="sku-9"), facts)
    assert TriggerKind.BROWSE_ABANDONMENT not in by_kind(scheduled)


def test_browse_min_views_is_a_knob() -> None:
    rules = {
        **DEFAULT_RULES,
        TriggerKind.BROWSE_ABANDONMENT: replace(DEFAULT_RULES[TriggerKind.BROWSE_ABANDONMENT], browse_min_views=2),
    }
    facts = PersonFacts(PERSON, product_view_counts={"sku-9": 2})
    assert TriggerKind.BROWSE_ABANDONMENT in by_kind(
        triggers_for_event(summary("PRODUCT_VIEW", product_id="sku-9"), facts, rules)
    )


def test_a_purchase_schedules_post_purchase_keyed_by_the_order_alone() -> None:
    event = summary("PURCHASE", order_id="order-77", product_ids=("a", "b"))
    instance = by_kind(triggers_for_event(event, PersonFacts(PERSON)))[TriggerKind.POST_PURCHASE]
    assert instance.due_at_ms == T0 + 3 * DAY_MS
    assert (instance.order_id, instance.product_ids) == ("order-77", ("a", "b"))
    merged_person = replace(event, person_id="f" * 32)
    again = by_kind(triggers_for_event(merged_person, PersonFacts("f" * 32)))[TriggerKind.POST_PURCHASE]
    assert again.idempotency_key == instance.idempotency_key
    other_order = by_kind(triggers_for_event(replace(event, order_id="order-78"), PersonFacts(PERSON)))
    assert other_order[TriggerKind.POST_PURCHASE].idempotency_key != instance.idempotency_key


def test_signing_up_schedules_an_immediate_welcome_once_per_person() -> None:
    first = by_kind(triggers_for_event(summary("SIGN_UP"), PersonFacts(PERSON)))[TriggerKind.WELCOME]
    again = by_kind(triggers_for_event(summary("SIGN_UP", T0 + DAY_MS), PersonFacts(PERSON)))[TriggerKind.WELCOME]
    assert first.due_at_ms == T0
    assert again.idempotency_key == first.idempotency_key
    assert TriggerKind.WELCOME not in by_kind(triggers_for_event(summary("LOGIN"), PersonFacts(PERSON)))


def test_every_event_of_a_visit_schedules_the_same_win_back_from_the_visit_start() -> None:
    visit = PersonFacts(PERSON, visit_started_ms=T0, last_on_site_ms=T0 + 20 * MINUTE_MS)
    first = by_kind(triggers_for_event(summary("PAGE_VIEW"), visit))[TriggerKind.WIN_BACK]
    later = by_kind(triggers_for_event(summary("SEARCH", T0 + 20 * MINUTE_MS), visit))[TriggerKind.WIN_BACK]
    assert first == later
    assert first.due_at_ms == T0 + 30 * DAY_MS
    next_visit = replace(visit, visit_started_ms=T0 + DAY_MS)
    assert by_kind(triggers_for_event(summary("PAGE_VIEW", T0 + DAY_MS), next_visit))[
        TriggerKind.WIN_BACK
    ].idempotency_key != (first.idempotency_key)


def test_opening_an_email_is_not_a_visit_and_schedules_no_win_back() -> None:
    assert triggers_for_event(summary("EMAIL_OPEN"), PersonFacts(PERSON, visit_started_ms=T0)) == ()


def test_unknown_event_kinds_schedule_nothing() -> None:
    assert triggers_for_event(summary("TELEPORT"), cart_facts("a")) == ()


def test_a_disabled_rule_schedules_nothing() -> None:
    rules = {**DEFAULT_RULES, TriggerKind.WELCOME: replace(DEFAULT_RULES[TriggerKind.WELCOME], enabled=False)}
    assert TriggerKind.WELCOME not in by_kind(triggers_for_event(summary("SIGN_UP"), PersonFacts(PERSON), rules))
    assert TriggerKind.WIN_BACK in by_kind(triggers_for_event(summary("SIGN_UP"), PersonFacts(PERSON), rules))


def test_new_arrivals_are_keyed_by_person_category_and_day() -> None:
    first = new_arrivals_trigger(PERSON, "Women > Knitwear", ("n1",), T0)
    assert first is not None
    assert (first.category, first.due_at_ms, first.channels) == ("Women > Knitwear", T0, (Channel.EMAIL, Channel.PUSH))
    same_day = new_arrivals_trigger(PERSON, "Women > Knitwear", ("n2",), T0 + MINUTE_MS)
    other_category = new_arrivals_trigger(PERSON, "Men > Shoes", ("n1",), T0)
    assert same_day is not None and other_category is not None
    assert same_day.idempotency_key == first.idempotency_key
    assert other_category.idempotency_key != first.idempotency_key
    assert new_arrivals_trigger(PERSON, "", ("n1",), T0) is None
    assert new_arrivals_trigger(PERSON, "Men > Shoes", (), T0) is None


# ---------------------------------------------------------------------------------- re-checks
def scheduled_cart(*products: str) -> TriggerInstance:
    return by_kind(triggers_for_event(summary("ADD_TO_CART"), cart_facts(*products)))[TriggerKind.ABANDONED_CART]


def test_an_abandoned_cart_untouched_for_the_delay_is_sent() -> None:
    instance = scheduled_cart("a", "b")
    verdict = still_due(instance, cart_facts("a", "b"), instance.due_at_ms)
    assert (verdict.send, verdict.reason) == (True, "DUE")


def test_nothing_is_sent_before_it_is_due() -> None:
    instance = scheduled_cart("a")
    verdict = still_due(instance, cart_facts("a"), instance.due_at_ms - 1)
    assert (verdict.send, verdict.reason, verdict.recheck_at_ms) == (False, "NOT_YET_DUE", instance.due_at_ms)


@pytest.mark.parametrize(
    ("facts", "reason"),
    [
        (cart_facts(), "CART_EMPTY"),
        (cart_facts("b", changed_ms=T0 + MINUTE_MS, last_purchase_ms=T0 + MINUTE_MS), "PURCHASED_SINCE"),
        (cart_facts("a", "b", "c", changed_ms=T0 + MINUTE_MS), "CART_CHANGED"),
    ],
)
def test_an_abandoned_cart_is_cancelled_when_emptied_bought_or_changed(facts: PersonFacts, reason: str) -> None:
    instance = scheduled_cart("a", "b")
    verdict = still_due(instance, facts, instance.due_at_ms + MINUTE_MS)
    assert (verdict.send, verdict.reason) == (False, reason)


def test_a_purchase_before_the_cart_changed_does_not_cancel_the_reminder() -> None:
    instance = scheduled_cart("a")
    verdict = still_due(instance, cart_facts("a", last_purchase_ms=T0 - DAY_MS), instance.due_at_ms)
    assert verdict.send


def test_an_abandoned_cart_waits_while_the_person_is_still_on_the_site() -> None:
    instance = scheduled_cart("a")
    browsing = cart_facts("a", last_on_site_ms=T0 + 50 * MINUTE_MS)
    verdict = still_due(instance, browsing, instance.due_at_ms)
    assert (verdict.send, verdict.reason) == (False, "STILL_ON_SITE")
    assert verdict.recheck_at_ms == T0 + 110 * MINUTE_MS
    assert still_due(instance, browsing, T0 + 110 * MINUTE_MS).send


def test_browse_abandonment_is_cancelled_once_the_product_is_carted_or_bought() -> None:
    facts = PersonFacts(PERSON, product_view_counts={"sku-9": 3}, visit_started_ms=T0, last_on_site_ms=T0)
    instance = by_kind(triggers_for_event(summary("PRODUCT_VIEW", product_id="sku-9"), facts))[
        TriggerKind.BROWSE_ABANDONMENT
    ]
    due = instance.due_at_ms
    assert still_due(instance, facts, due).send
    carted = still_due(instance, replace(facts, cart_product_ids=("sku-9",)), due)
    bought = still_due(instance, replace(facts, purchased_product_ids=frozenset({"sku-9"})), due)
    assert (carted.send, carted.reason) == (False, "PRODUCT_IN_CART")
    assert (bought.send, bought.reason) == (False, "PRODUCT_PURCHASED")


def test_win_back_is_cancelled_by_a_later_visit_and_sent_after_thirty_quiet_days() -> None:
    visit = PersonFacts(PERSON, visit_started_ms=T0, last_on_site_ms=T0 + 10 * MINUTE_MS)
    instance = by_kind(triggers_for_event(summary("PAGE_VIEW"), visit))[TriggerKind.WIN_BACK]
    returned = replace(visit, visit_started_ms=T0 + 10 * DAY_MS, last_on_site_ms=T0 + 10 * DAY_MS)
    cancelled = still_due(instance, returned, instance.due_at_ms)
    assert (cancelled.send, cancelled.reason) == (False, "VISITED_SINCE")
    # Due 30 days after the visit started, but the visit went on for 10 minutes.
    early = still_due(instance, visit, instance.due_at_ms)
    assert (early.send, early.recheck_at_ms) == (False, T0 + 10 * MINUTE_MS + 30 * DAY_MS)
    assert still_due(instance, visit, T0 + 10 * MINUTE_MS + 30 * DAY_MS).send


def test_new_arrivals_are_dropped_when_the_category_is_no_longer_the_favourite() -> None:
    instance = new_arrivals_trigger(PERSON, "Women > Knitwear", ("n1",), T0)
    assert instance is not None
    assert still_due(instance, PersonFacts(PERSON, favourite_category="Women > Knitwear"), T0).send
    verdict = still_due(instance, PersonFacts(PERSON, favourite_category="Men > Shoes"), T0)
    assert (verdict.send, verdict.reason) == (False, "NO_LONGER_FAVOURITE_CATEGORY")


def test_welcome_and_post_purchase_are_sent_when_due() -> None:
    scheduled = by_kind(triggers_for_event(summary("PURCHASE", order_id="o1"), PersonFacts(PERSON)))
    post_purchase = scheduled[TriggerKind.POST_PURCHASE]
    assert still_due(post_purchase, PersonFacts(PERSON), post_purchase.due_at_ms).send
    assert not still_due(post_purchase, PersonFacts(PERSON), post_purchase.due_at_ms - 1).send


def test_an_instance_whose_rule_was_disabled_since_is_dropped() -> None:
    instance = scheduled_cart("a")
    rules = {
        **DEFAULT_RULES,
        TriggerKind.ABANDONED_CART: replace(DEFAULT_RULES[TriggerKind.ABANDONED_CART], enabled=False),
    }
    verdict = still_due(instance, cart_facts("a"), instance.due_at_ms, rules)
    assert (verdict.send, verdict.reason) == (False, "RULE_DISABLED")


# ------------------------------------------------------------------------ facts from a profile
def product(pid: str, category: tuple[str, ...] = ("Women", "Knitwear")) -> Product:
    return Product(pid, title=pid.title(), category_path=category, price=49.9, currency="EUR")


def test_person_facts_read_cart_purchases_visit_and_tastes_from_the_folded_state() -> None:
    ctx = Context(country="FR", language="fr-FR")
    shoes = ("Men", "Shoes")
    events = [
        TrackedEvent("e1", EventKind.PRODUCT_VIEW, T0, ctx, product=product("sku-1")),
        TrackedEvent("e2", EventKind.PRODUCT_VIEW, T0 + 1_000, ctx, product=product("sku-1")),
        TrackedEvent("e3", EventKind.PRODUCT_VIEW, T0 + 2_000, ctx, product=product("sku-2", shoes)),
        TrackedEvent("e4", EventKind.ADD_TO_CART, T0 + 3_000, ctx, product=product("sku-1"), quantity=1),
        TrackedEvent("e5", EventKind.ADD_TO_CART, T0 + 4_000, ctx, product=product("sku-3"), quantity=1),
        TrackedEvent(
            "e6",
            EventKind.PURCHASE,
            T0 + 5_000,
            ctx,
            order=Order("o1", (OrderLine(product("sku-3"), 1),), 49.9, "EUR"),
        ),
        TrackedEvent("e7", EventKind.SIGN_UP, T0 + 6_000, ctx),
    ]
    state = fold(PERSON, events, FoldRules())
    facts = person_facts(state, T0 + 10_000, has_email=True)
    assert facts.person_id == PERSON
    assert facts.cart_product_ids == ("sku-1",)
    assert facts.cart_changed_ms == T0 + 5_000  # the purchase took sku-3 out of the cart
    assert facts.last_purchase_ms == T0 + 5_000
    assert facts.purchased_product_ids == frozenset({"sku-3"})
    assert (facts.visit_started_ms, facts.last_on_site_ms) == (T0, T0 + 6_000)
    assert facts.product_view_counts == {"sku-1": 2, "sku-2": 1}
    assert facts.favourite_category == "Women > Knitwear"
    assert (facts.country, facts.language) == ("FR", "fr-FR")
    assert (facts.signed_up_ms, facts.order_count) == (T0 + 6_000, 1)
    assert (facts.has_email, facts.has_push_token) == (True, False)


def test_person_facts_of_a_person_never_seen_on_site_are_empty() -> None:
    state = fold(PERSON, [], FoldRules())
    facts = person_facts(state, T0)
    assert facts == PersonFacts(PERSON)
