"""What a visitor did, as the profile domain sees it: plain values, no protobuf."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

CATEGORY_SEPARATOR = " > "


class EventKind(enum.Enum):
    PAGE_VIEW = 1
    CATEGORY_VIEW = 2
    PRODUCT_VIEW = 3
    SEARCH = 4
    ADD_TO_CART = 5
    REMOVE_FROM_CART = 6
    CHECKOUT_START = 7
    PURCHASE = 8
    SIGN_UP = 9
    LOGIN = 10
    REVIEW_READ = 11
    COUPON_APPLIED = 12
    EMAIL_OPEN = 13
    EMAIL_CLICK = 14
    PUSH_OPEN = 15

    @property
    def is_page(self) -> bool:
        """Events that are a page of the storefront (counted as session depth)."""
        return self in _PAGE_KINDS


_PAGE_KINDS = frozenset(
    {
        EventKind.PAGE_VIEW,
        EventKind.CATEGORY_VIEW,
        EventKind.PRODUCT_VIEW,
        EventKind.SEARCH,
        EventKind.CHECKOUT_START,
        EventKind.REVIEW_READ,
    }
)


@dataclass(frozen=True, slots=True)
class Product:
    product_id: str
    title: str = ""
    category_path: tuple[str, ...] = ()
    brand: str = ""
    price: float = 0.0
    currency: str = ""
    rating: float = 0.0

    @property
    def category(self) -> str:
        """The category path as one key, e.g. 'Women > Knitwear > Cashmere sweaters'."""
        return CATEGORY_SEPARATOR.join(self.category_path)


@dataclass(frozen=True, slots=True)
class OrderLine:
    product: Product
    quantity: int


@dataclass(frozen=True, slots=True)
class Order:
    order_id: str
    lines: tuple[OrderLine, ...]
    total: float
    currency: str = ""


@dataclass(frozen=True, slots=True)
class Context:
    device_type: str = ""
    os: str = ""
    browser: str = ""
    page_url: str = ""
    referrer: str = ""
    utm_source: str = ""
    utm_medium: str = ""
    utm_campaign: str = ""
    country: str = ""
    city: str = ""
    language: str = ""


@dataclass(frozen=True, slots=True)
class TrackedEvent:
    """One event of a person, ready to fold into the live profile."""

    event_id: str
    kind: EventKind
    time_ms: int
    context: Context = field(default_factory=Context)
    product: Product | None = None
    quantity: int = 0
    search_query: str = ""
    order: Order | None = None
    coupon_code: str = ""
    message_id: str = ""

    @property
    def order_key(self) -> tuple[int, str]:
        """Events fold in time order; the id breaks ties so every replay folds the same way."""
        return (self.time_ms, self.event_id)
