"""The live state of a person: what the fold of their events leaves behind.

The state is a pure function of the person's events in time order (`folding.fold`), so Redis
can lose it and Cassandra's log rebuilds exactly the same one (floats are never rounded on the
way through JSON, so an incremental fold and a rebuild agree to the bit). It is stored in Redis as JSON;
`to_dict`/`from_dict` are the only (de)serialisers. Anything that depends on "now" (decay to the
present, abandoned carts, traits) is computed when the profile is read (`view.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

STATE_VERSION = 1


@dataclass(slots=True)
class Decayed:
    """A score that halves every half-life; stored as its value at `at_ms`."""

    score: float
    at_ms: int

    def to_list(self) -> list[float]:
        return [self.score, self.at_ms]


@dataclass(slots=True)
class SessionState:
    start_ms: int
    last_ms: int
    page_count: int = 0
    categories: dict[str, int] = field(default_factory=dict)
    products: dict[str, int] = field(default_factory=dict)
    product_titles: dict[str, str] = field(default_factory=dict)
    product_categories: dict[str, str] = field(default_factory=dict)
    searches: list[str] = field(default_factory=list)
    product_sequence: list[str] = field(default_factory=list)
    traffic_source: str = "DIRECT"
    utm_source: str = ""
    utm_medium: str = ""
    utm_campaign: str = ""
    landing_page_url: str = ""
    first_cart_ms: int = 0
    review_reads: int = 0
    rating_sorts: int = 0
    promo_pages: int = 0
    coupons: int = 0
    price_buckets: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": self.start_ms,
            "last": self.last_ms,
            "pages": self.page_count,
            "cats": self.categories,
            "prods": self.products,
            "titles": self.product_titles,
            "pcats": self.product_categories,
            "searches": self.searches,
            "seq": self.product_sequence,
            "source": self.traffic_source,
            "utm": [self.utm_source, self.utm_medium, self.utm_campaign],
            "landing": self.landing_page_url,
            "cart_at": self.first_cart_ms,
            "reviews": self.review_reads,
            "rating_sorts": self.rating_sorts,
            "promo": self.promo_pages,
            "coupons": self.coupons,
            "buckets": self.price_buckets,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SessionState:
        utm = data.get("utm") or ["", "", ""]
        return cls(
            start_ms=data["start"],
            last_ms=data["last"],
            page_count=data.get("pages", 0),
            categories=dict(data.get("cats", {})),
            products=dict(data.get("prods", {})),
            product_titles=dict(data.get("titles", {})),
            product_categories=dict(data.get("pcats", {})),
            searches=list(data.get("searches", [])),
            product_sequence=list(data.get("seq", [])),
            traffic_source=data.get("source", "DIRECT"),
            utm_source=utm[0],
            utm_medium=utm[1],
            utm_campaign=utm[2],
            landing_page_url=data.get("landing", ""),
            first_cart_ms=data.get("cart_at", 0),
            review_reads=data.get("reviews", 0),
            rating_sorts=data.get("rating_sorts", 0),
            promo_pages=data.get("promo", 0),
            coupons=data.get("coupons", 0),
            price_buckets=dict(data.get("buckets", {})),
        )


@dataclass(slots=True)
class VisitSummary:
    """What a finished visit was about, kept to say "as in the 1st visit"."""

    start_ms: int
    page_count: int
    top_category: str
    top_price_bucket: int | None

    def to_list(self) -> list[Any]:
        return [self.start_ms, self.page_count, self.top_category, self.top_price_bucket]

    @classmethod
    def from_list(cls, data: list[Any]) -> VisitSummary:
        return cls(data[0], data[1], data[2], data[3])


@dataclass(slots=True)
class CartLineState:
    quantity: int
    price: float
    title: str
    category: str
    brand: str
    currency: str

    def to_list(self) -> list[Any]:
        return [self.quantity, self.price, self.title, self.category, self.brand, self.currency]

    @classmethod
    def from_list(cls, data: list[Any]) -> CartLineState:
        return cls(*data)


@dataclass(slots=True)
class PurchaseRecord:
    order_id: str
    time_ms: int
    total: float
    currency: str
    product_ids: list[str]
    main_category: str

    def to_list(self) -> list[Any]:
        return [self.order_id, self.time_ms, self.total, self.currency, self.product_ids, self.main_category]

    @classmethod
    def from_list(cls, data: list[Any]) -> PurchaseRecord:
        return cls(data[0], data[1], data[2], data[3], list(data[4]), data[5])


@dataclass(slots=True)
class ProfileState:
    person_id: str
    event_count: int = 0
    first_event_ms: int = 0
    last_event_ms: int = 0
    last_event_id: str = ""
    visit_count: int = 0
    first_visit_ms: int = 0
    previous_visit_ms: int = 0
    session: SessionState | None = None
    past_visits: list[VisitSummary] = field(default_factory=list)
    category_affinity: dict[str, Decayed] = field(default_factory=dict)
    brand_affinity: dict[str, Decayed] = field(default_factory=dict)
    price_affinity: dict[str, Decayed] = field(default_factory=dict)
    cart: dict[str, CartLineState] = field(default_factory=dict)
    cart_changed_ms: int = 0
    order_count: int = 0
    total_spent: float = 0.0
    currency: str = ""
    first_purchase_ms: int = 0
    last_purchase_ms: int = 0
    recent_purchases: list[PurchaseRecord] = field(default_factory=list)
    purchased_product_ids: list[str] = field(default_factory=list)
    review_reads: int = 0
    rating_sorts: int = 0
    promo_pages: int = 0
    coupons: int = 0
    email_opens: int = 0
    email_clicks: int = 0
    push_opens: int = 0
    signed_up_ms: int = 0
    last_login_ms: int = 0
    device_type: str = ""
    os: str = ""
    browser: str = ""
    country: str = ""
    city: str = ""
    language: str = ""
    recent_event_ids: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": STATE_VERSION,
            "person": self.person_id,
            "events": self.event_count,
            "first_event": self.first_event_ms,
            "last_event": self.last_event_ms,
            "last_event_id": self.last_event_id,
            "visits": self.visit_count,
            "first_visit": self.first_visit_ms,
            "previous_visit": self.previous_visit_ms,
            "session": self.session.to_dict() if self.session else None,
            "past_visits": [visit.to_list() for visit in self.past_visits],
            "aff_cat": {key: value.to_list() for key, value in self.category_affinity.items()},
            "aff_brand": {key: value.to_list() for key, value in self.brand_affinity.items()},
            "aff_price": {key: value.to_list() for key, value in self.price_affinity.items()},
            "cart": {key: line.to_list() for key, line in self.cart.items()},
            "cart_changed": self.cart_changed_ms,
            "orders": self.order_count,
            "spent": self.total_spent,
            "currency": self.currency,
            "first_purchase": self.first_purchase_ms,
            "last_purchase": self.last_purchase_ms,
            "purchases": [purchase.to_list() for purchase in self.recent_purchases],
            "bought": self.purchased_product_ids,
            "counters": [
                self.review_reads,
                self.rating_sorts,
                self.promo_pages,
                self.coupons,
                self.email_opens,
                self.email_clicks,
                self.push_opens,
            ],
            "signed_up": self.signed_up_ms,
            "last_login": self.last_login_ms,
            "device": [self.device_type, self.os, self.browser],
            "geo": [self.country, self.city, self.language],
            "ids": self.recent_event_ids,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProfileState:
        counters = data.get("counters") or [0] * 7
        device = data.get("device") or ["", "", ""]
        geo = data.get("geo") or ["", "", ""]
        session = data.get("session")
        return cls(
            person_id=data["person"],
            event_count=data.get("events", 0),
            first_event_ms=data.get("first_event", 0),
            last_event_ms=data.get("last_event", 0),
            last_event_id=data.get("last_event_id", ""),
            visit_count=data.get("visits", 0),
            first_visit_ms=data.get("first_visit", 0),
            previous_visit_ms=data.get("previous_visit", 0),
            session=SessionState.from_dict(session) if session else None,
            past_visits=[VisitSummary.from_list(visit) for visit in data.get("past_visits", [])],
            category_affinity={key: Decayed(v[0], int(v[1])) for key, v in data.get("aff_cat", {}).items()},
            brand_affinity={key: Decayed(v[0], int(v[1])) for key, v in data.get("aff_brand", {}).items()},
            price_affinity={key: Decayed(v[0], int(v[1])) for key, v in data.get("aff_price", {}).items()},
            cart={key: CartLineState.from_list(line) for key, line in data.get("cart", {}).items()},
            cart_changed_ms=data.get("cart_changed", 0),
            order_count=data.get("orders", 0),
            total_spent=data.get("spent", 0.0),
            currency=data.get("currency", ""),
            first_purchase_ms=data.get("first_purchase", 0),
            last_purchase_ms=data.get("last_purchase", 0),
            recent_purchases=[PurchaseRecord.from_list(p) for p in data.get("purchases", [])],
            purchased_product_ids=list(data.get("bought", [])),
            review_reads=counters[0],
            rating_sorts=counters[1],
            promo_pages=counters[2],
            coupons=counters[3],
            email_opens=counters[4],
            email_clicks=counters[5],
            push_opens=counters[6],
            signed_up_ms=data.get("signed_up", 0),
            last_login_ms=data.get("last_login", 0),
            device_type=device[0],
            os=device[1],
            browser=device[2],
            country=geo[0],
            city=geo[1],
            language=geo[2],
            recent_event_ids=list(data.get("ids", [])),
        )
