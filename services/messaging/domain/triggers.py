"""Which messages a person's events schedule, and whether a scheduled message is still worth
sending when it falls due.

Triggers are decided twice: when an event is folded (`triggers_for_event` schedules a
`TriggerInstance` for later) and when the instance falls due (`still_due` re-reads the person's
current facts, because a cart may have been bought or emptied in between). Repeated firings of the
same instance (a replayed event, a second item added to the same cart contents) produce the same
`idempotency_key`, so the queue and the sent-messages ledger can drop the duplicates.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from services.profile.domain.events import EventKind
from services.profile.domain.folding import FoldRules
from services.profile.domain.state import ProfileState
from services.profile.domain.view import top_affinities

MINUTE_MS: Final = 60_000
HOUR_MS: Final = 60 * MINUTE_MS
DAY_MS: Final = 24 * HOUR_MS


class TriggerKind(enum.Enum):
    ABANDONED_CART = 1
    BROWSE_ABANDONMENT = 2
    POST_PURCHASE = 3
    WELCOME = 4
    WIN_BACK = 5
    NEW_ARRIVALS = 6


class Channel(enum.Enum):
    EMAIL = 1
    PUSH = 2
    RETARGETING = 3


@dataclass(frozen=True, slots=True)
class TriggerRule:
    """How one kind of trigger behaves. `delay_ms` is the only delay: for POST_PURCHASE it is the
    time after the order, for WIN_BACK the time without a visit (one knob per meaning, so a rule
    can never hold two disagreeing delays)."""

    kind: TriggerKind
    enabled: bool = True
    delay_ms: int = 0
    channels: tuple[Channel, ...] = (Channel.EMAIL,)
    # BROWSE_ABANDONMENT: views of one product in a visit before it counts as "considered".
    browse_min_views: int = 3

    def __post_init__(self) -> None:
        if self.delay_ms < 0:
            raise ValueError(f"{self.kind.name}: delay_ms must not be negative, got {self.delay_ms}")
        if not self.channels or len(set(self.channels)) != len(self.channels):
            raise ValueError(f"{self.kind.name}: channels must be non-empty and without repeats")
        if self.browse_min_views < 1:
            raise ValueError(f"{self.kind.name}: browse_min_views must be at least 1, got {self.browse_min_views}")


RuleBook = Mapping[TriggerKind, TriggerRule]

DEFAULT_RULES: Final[RuleBook] = MappingProxyType(
    {
        TriggerKind.ABANDONED_CART: TriggerRule(
            TriggerKind.ABANDONED_CART,
            delay_ms=60 * MINUTE_MS,
            channels=(Channel.EMAIL, Channel.PUSH, Channel.RETARGETING),
        ),
        TriggerKind.BROWSE_ABANDONMENT: TriggerRule(
            TriggerKind.BROWSE_ABANDONMENT, delay_ms=2 * HOUR_MS, channels=(Channel.EMAIL,), browse_min_views=3
        ),
        TriggerKind.POST_PURCHASE: TriggerRule(TriggerKind.POST_PURCHASE, delay_ms=3 * DAY_MS),
        TriggerKind.WELCOME: TriggerRule(TriggerKind.WELCOME, delay_ms=0),
        TriggerKind.WIN_BACK: TriggerRule(TriggerKind.WIN_BACK, delay_ms=30 * DAY_MS),
        TriggerKind.NEW_ARRIVALS: TriggerRule(TriggerKind.NEW_ARRIVALS, channels=(Channel.EMAIL, Channel.PUSH)),
    }
)


@dataclass(frozen=True, slots=True)
class ProfileEventSummary:
    """One event the profile service folded, as messaging needs it."""

    kind: str  # an EventKind name, e.g. "ADD_TO_CART"; unknown names schedule nothing
    person_id: str
    time_ms: int
    product_id: str = ""  # PRODUCT_VIEW, ADD_TO_CART, REMOVE_FROM_CART
    order_id: str = ""  # PURCHASE
    product_ids: tuple[str, ...] = ()  # PURCHASE: the order's products


@dataclass(frozen=True, slots=True)
class PersonFacts:
    """What triggers need to know about a person at one moment (built from the live state)."""

    person_id: str
    cart_product_ids: tuple[str, ...] = ()  # sorted
    cart_changed_ms: int = 0
    last_purchase_ms: int = 0
    purchased_product_ids: frozenset[str] = frozenset()
    visit_started_ms: int = 0  # start of the latest visit; 0 = never visited
    last_on_site_ms: int = 0  # last event of the latest visit (opening an e-mail is not a visit)
    # Views per product in the latest visit (the live state keeps no longer history).
    product_view_counts: Mapping[str, int] = field(default_factory=dict, hash=False)
    favourite_category: str = ""  # full category path, e.g. "Women > Knitwear"
    country: str = ""
    language: str = ""
    signed_up_ms: int = 0
    order_count: int = 0
    has_email: bool = False
    has_push_token: bool = False


def person_facts(
    state: ProfileState,
    now_ms: int,
    *,
    has_email: bool = False,
    has_push_token: bool = False,
    affinity_half_life_ms: int = FoldRules().affinity_half_life_ms,
) -> PersonFacts:
    """The facts of a live state at `now_ms`. Reachability is not in the state (identity and the
    contact store know it), so the caller says whether an address or a push token exists."""
    session = state.session
    favourites = top_affinities(state.category_affinity, now_ms, affinity_half_life_ms, limit=1)
    return PersonFacts(
        person_id=state.person_id,
        cart_product_ids=tuple(sorted(state.cart)),
        cart_changed_ms=state.cart_changed_ms,
        last_purchase_ms=state.last_purchase_ms,
        purchased_product_ids=frozenset(state.purchased_product_ids),
        visit_started_ms=session.start_ms if session is not None else 0,
        last_on_site_ms=session.last_ms if session is not None else 0,
        product_view_counts=dict(session.products) if session is not None else {},
        favourite_category=favourites[0].key if favourites else "",
        country=state.country,
        language=state.language,
        signed_up_ms=state.signed_up_ms,
        order_count=state.order_count,
        has_email=has_email,
        has_push_token=has_push_token,
    )


@dataclass(frozen=True, slots=True)
class TriggerInstance:
    """A message scheduled for one person. `anchor_ms` is the moment the trigger is about (the
    cart's last change, the order, the start of the last visit...); `due_at_ms` = anchor + delay."""

    kind: TriggerKind
    person_id: str
    due_at_ms: int
    channels: tuple[Channel, ...]
    idempotency_key: str
    anchor_ms: int
    product_ids: tuple[str, ...] = ()  # the cart, the browsed product, the order's or new products
    order_id: str = ""
    category: str = ""  # NEW_ARRIVALS

    @property
    def delay_ms(self) -> int:
        return self.due_at_ms - self.anchor_ms


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether to send a due instance now. When `send` is false but the condition may still come
    true (the person is still shopping), `recheck_at_ms` says when to look again."""

    send: bool
    reason: str  # UPPER_SNAKE_CASE, stable: logged and counted
    recheck_at_ms: int | None = None


def idempotency_key(kind: TriggerKind, *parts: str) -> str:
    """`KIND:` + 32 hex digits of the parts: bounded length whatever the cart's size, and the
    unit separator between parts keeps ("ab", "c") and ("a", "bc") apart."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]
    return f"{kind.name}:{digest}"


def utc_day(time_ms: int) -> str:
    return dt.datetime.fromtimestamp(time_ms // 1000, dt.UTC).date().isoformat()


_OFF_SITE_KINDS: Final = frozenset({EventKind.EMAIL_OPEN, EventKind.PUSH_OPEN})


def triggers_for_event(
    event: ProfileEventSummary, facts: PersonFacts, rules: RuleBook = DEFAULT_RULES
) -> tuple[TriggerInstance, ...]:
    """The instances an event schedules; `facts` is the person's state just after the event.

    - cart change leaving a non-empty cart → ABANDONED_CART, keyed by person + cart contents
      (the same contents are reminded once, however often they are reached);
    - PRODUCT_VIEW reaching `browse_min_views` views in the visit, product neither in the cart nor
      bought → BROWSE_ABANDONMENT, keyed by person + product + UTC day;
    - PURCHASE → POST_PURCHASE, keyed by order id alone (so a later merge of persons cannot send
      it twice);
    - SIGN_UP → WELCOME, keyed by person;
    - any on-site event → WIN_BACK, keyed by person + start of the visit (every event of a visit
      gives the same instance; the next visit's instance replaces it, see `still_due`).
    NEW_ARRIVALS comes from the catalog, not from a person's events: see `new_arrivals_trigger`.
    """
    kind = EventKind.__members__.get(event.kind)
    if kind is None:
        return ()
    scheduled: list[TriggerInstance] = []

    def schedule(
        trigger: TriggerKind,
        anchor_ms: int,
        key_parts: tuple[str, ...],
        product_ids: tuple[str, ...] = (),
        order_id: str = "",
    ) -> None:
        rule = rules.get(trigger)
        if rule is None or not rule.enabled:
            return
        scheduled.append(
            TriggerInstance(
                kind=trigger,
                person_id=event.person_id,
                due_at_ms=anchor_ms + rule.delay_ms,
                channels=rule.channels,
                idempotency_key=idempotency_key(trigger, *key_parts),
                anchor_ms=anchor_ms,
                product_ids=product_ids,
                order_id=order_id,
            )
        )

    person = event.person_id
    if kind in (EventKind.ADD_TO_CART, EventKind.REMOVE_FROM_CART) and facts.cart_product_ids:
        cart = facts.cart_product_ids
        anchor = facts.cart_changed_ms or event.time_ms
        schedule(TriggerKind.ABANDONED_CART, anchor, (person, *cart), product_ids=cart)
    if kind is EventKind.PRODUCT_VIEW and event.product_id:
        browse_rule = rules.get(TriggerKind.BROWSE_ABANDONMENT)
        product = event.product_id
        if (
            browse_rule is not None
            and facts.product_view_counts.get(product, 0) >= browse_rule.browse_min_views
            and product not in facts.cart_product_ids
            and product not in facts.purchased_product_ids
        ):
            day = utc_day(event.time_ms)
            schedule(TriggerKind.BROWSE_ABANDONMENT, event.time_ms, (person, product, day), product_ids=(product,))
    if kind is EventKind.PURCHASE and event.order_id:
        schedule(
            TriggerKind.POST_PURCHASE,
            event.time_ms,
            (event.order_id,),
            product_ids=event.product_ids,
            order_id=event.order_id,
        )
    if kind is EventKind.SIGN_UP:
        schedule(TriggerKind.WELCOME, event.time_ms, (person,))
    if kind not in _OFF_SITE_KINDS:
        visit_started = facts.visit_started_ms or event.time_ms
        schedule(TriggerKind.WIN_BACK, visit_started, (person, str(visit_started)))
    return tuple(scheduled)


def new_arrivals_trigger(
    person_id: str,
    category: str,
    product_ids: tuple[str, ...],
    announced_at_ms: int,
    rules: RuleBook = DEFAULT_RULES,
) -> TriggerInstance | None:
    """New products in `category`, for a person whose favourite category it is; at most one per
    person, category and UTC day however many batches arrive that day."""
    rule = rules.get(TriggerKind.NEW_ARRIVALS)
    if rule is None or not rule.enabled or not category or not product_ids:
        return None
    return TriggerInstance(
        kind=TriggerKind.NEW_ARRIVALS,
        person_id=person_id,
        due_at_ms=announced_at_ms + rule.delay_ms,
        channels=rule.channels,
        idempotency_key=idempotency_key(TriggerKind.NEW_ARRIVALS, person_id, category, utc_day(announced_at_ms)),
        anchor_ms=announced_at_ms,
        product_ids=product_ids,
        category=category,
    )


DUE: Final = "DUE"


def still_due(instance: TriggerInstance, facts: PersonFacts, now_ms: int, rules: RuleBook | None = None) -> Verdict:
    """Re-checks an instance's condition against the person's current facts at send time.
    With `rules`, an instance whose rule has since been disabled is dropped."""
    if rules is not None:
        rule = rules.get(instance.kind)
        if rule is None or not rule.enabled:
            return Verdict(False, "RULE_DISABLED")
    if now_ms < instance.due_at_ms:
        return Verdict(False, "NOT_YET_DUE", instance.due_at_ms)
    match instance.kind:
        case TriggerKind.ABANDONED_CART:
            return _abandoned_cart_due(instance, facts, now_ms)
        case TriggerKind.BROWSE_ABANDONMENT:
            return _browse_abandonment_due(instance, facts, now_ms)
        case TriggerKind.WIN_BACK:
            return _win_back_due(instance, facts, now_ms)
        case TriggerKind.NEW_ARRIVALS:
            if facts.favourite_category != instance.category:
                return Verdict(False, "NO_LONGER_FAVOURITE_CATEGORY")
            return Verdict(True, DUE)
        case TriggerKind.POST_PURCHASE | TriggerKind.WELCOME:
            return Verdict(True, DUE)


def _still_shopping(facts: PersonFacts, idle_since_ms: int, delay_ms: int, now_ms: int) -> Verdict | None:
    """Nobody wants a reminder while still on the shop: wait for `delay_ms` of inactivity."""
    quiet_from = max(idle_since_ms, facts.last_on_site_ms) + delay_ms
    if now_ms < quiet_from:
        return Verdict(False, "STILL_ON_SITE", quiet_from)
    return None


def _abandoned_cart_due(instance: TriggerInstance, facts: PersonFacts, now_ms: int) -> Verdict:
    if not facts.cart_product_ids:
        return Verdict(False, "CART_EMPTY")
    if facts.last_purchase_ms and facts.last_purchase_ms >= facts.cart_changed_ms:
        return Verdict(False, "PURCHASED_SINCE")
    if facts.cart_product_ids != tuple(sorted(instance.product_ids)):
        # The change scheduled its own instance, keyed by the new contents.
        return Verdict(False, "CART_CHANGED")
    return _still_shopping(facts, facts.cart_changed_ms, instance.delay_ms, now_ms) or Verdict(True, DUE)


def _browse_abandonment_due(instance: TriggerInstance, facts: PersonFacts, now_ms: int) -> Verdict:
    if any(product in facts.cart_product_ids for product in instance.product_ids):
        return Verdict(False, "PRODUCT_IN_CART")
    if any(product in facts.purchased_product_ids for product in instance.product_ids):
        return Verdict(False, "PRODUCT_PURCHASED")
    return _still_shopping(facts, instance.anchor_ms, instance.delay_ms, now_ms) or Verdict(True, DUE)


def _win_back_due(instance: TriggerInstance, facts: PersonFacts, now_ms: int) -> Verdict:
    if facts.visit_started_ms > instance.anchor_ms:
        return Verdict(False, "VISITED_SINCE")
    return _still_shopping(facts, instance.anchor_ms, instance.delay_ms, now_ms) or Verdict(True, DUE)
