"""Events between the wire and the domain: validation with field paths, proto -> TrackedEvent.

Each event of a batch is checked on its own, so one bad event is reported with the fields that
are wrong (`events[3].product.price.amount`) while the good ones still land.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from rapport.common.v1 import event_pb2
from services.common.errors import FieldViolation, InvalidArgument
from services.common.identifiers import IdentifierKey, parse_identifier
from services.profile.domain.events import Context, EventKind, Order, OrderLine, Product, TrackedEvent

_SPACE_OR_CONTROL = re.compile(r"[\x00-\x20]")
MAX_EVENT_ID_BYTES = 128
MAX_TEXT_BYTES = 2048
MAX_EVENT_BYTES = 256 * 1024  # a wholesale order of 2 000 lines fits
MAX_ORDER_LINES = 2000
MAX_CATEGORY_DEPTH = 10
_SMALLEST_TEXT_LIMIT = 128
_CONTEXT_URL_FIELDS = tuple(
    (name, f"context.{name}")
    for name in ("page_url", "referrer", "utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content")
)
_CONTEXT_SHORT_FIELDS = tuple(
    (name, f"context.{name}") for name in ("device_type", "os", "browser", "country", "city", "language")
)
PRODUCT_KINDS = frozenset(
    {EventKind.PRODUCT_VIEW, EventKind.ADD_TO_CART, EventKind.REMOVE_FROM_CART, EventKind.REVIEW_READ}
)


@dataclass(frozen=True)
class CheckedEvent:
    """A valid event: its identifier (normalised) and its domain form, minus the person."""

    identifier: IdentifierKey
    event: TrackedEvent
    proto: event_pb2.Event


def event_time_ms(event: event_pb2.Event) -> int:
    return event.event_time.seconds * 1000 + event.event_time.nanos // 1_000_000


def _text(
    value: str, path: str, violations: list[FieldViolation], limit: int = MAX_TEXT_BYTES, field: str = ""
) -> None:
    """Check a text's size; the field's full name is only built when it is wrong (hot path)."""
    if len(value) * 4 <= limit:  # UTF-8 needs at most 4 bytes a character: no need to encode
        return
    size = len(value.encode())
    if size > limit:
        violations.append(
            FieldViolation(f"{path}.{field}" if field else path, f"must be at most {limit} bytes, got {size}")
        )


def _money(amount: float, path: str, violations: list[FieldViolation]) -> None:
    if not math.isfinite(amount) or amount < 0:
        violations.append(FieldViolation(path, "must be a finite amount, zero or more"))


def _check_product(product: event_pb2.ProductRef, path: str, need_id: bool, violations: list[FieldViolation]) -> None:
    if need_id and not product.product_id.strip():
        violations.append(FieldViolation(f"{path}.product_id", "must not be empty"))
    _text(product.product_id, path, violations, 256, "product_id")
    _text(product.title, path, violations, 512, "title")
    _text(product.brand, path, violations, 256, "brand")
    if len(product.category_path) > MAX_CATEGORY_DEPTH:
        violations.append(FieldViolation(f"{path}.category_path", f"must have at most {MAX_CATEGORY_DEPTH} levels"))
    for index, level in enumerate(product.category_path):
        if not level.strip():
            violations.append(FieldViolation(f"{path}.category_path[{index}]", "must not be empty"))
        _text(level, path, violations, 256, f"category_path[{index}]")
    _money(product.price.amount, f"{path}.price.amount", violations)
    if not (0 <= product.rating <= 5) or not math.isfinite(product.rating):
        violations.append(FieldViolation(f"{path}.rating", "must be between 0 and 5"))


def check_event(event: event_pb2.Event, path: str, now_ms: int, max_future_ms: int, max_age_ms: int) -> CheckedEvent:
    """Validate one event; raises InvalidArgument naming every bad field under `path`."""
    violations: list[FieldViolation] = []
    size = event.ByteSize()
    if size > MAX_EVENT_BYTES:
        raise InvalidArgument([FieldViolation(path, f"must be at most {MAX_EVENT_BYTES} bytes, got {size}")])
    event_id = event.event_id
    if not event_id.strip():
        violations.append(FieldViolation(f"{path}.event_id", "must not be empty"))
    elif len(event_id.encode()) > MAX_EVENT_ID_BYTES or _SPACE_OR_CONTROL.search(event_id):
        violations.append(
            FieldViolation(f"{path}.event_id", f"must be at most {MAX_EVENT_ID_BYTES} bytes without spaces")
        )
    at_ms = event_time_ms(event)
    if not event.HasField("event_time") or at_ms <= 0:
        violations.append(FieldViolation(f"{path}.event_time", "must be set"))
    elif at_ms > now_ms + max_future_ms:
        violations.append(FieldViolation(f"{path}.event_time", "is too far in the future (check the device clock)"))
    elif at_ms < now_ms - max_age_ms:
        violations.append(FieldViolation(f"{path}.event_time", "is older than the oldest event accepted"))
    kind: EventKind | None
    try:
        kind = EventKind(event.type)
    except ValueError:
        kind = None
        violations.append(FieldViolation(f"{path}.type", "must be a known EventType, not UNSPECIFIED"))
    identifier: IdentifierKey | None = None
    if not event.HasField("identifier"):
        violations.append(FieldViolation(f"{path}.identifier", "must be set"))
    else:
        try:
            identifier = parse_identifier(int(event.identifier.type), event.identifier.value, f"{path}.identifier")
        except InvalidArgument as error:
            violations.extend(error.violations)
    # A field can only be longer than its limit if the whole event is: small events skip the checks.
    if size > _SMALLEST_TEXT_LIMIT:
        context = event.context
        for name, label in _CONTEXT_URL_FIELDS:
            _text(getattr(context, name), path, violations, MAX_TEXT_BYTES, label)
        for name, label in _CONTEXT_SHORT_FIELDS:
            _text(getattr(context, name), path, violations, 128, label)
        _text(event.search_query, path, violations, 512, "search_query")
        _text(event.coupon_code, path, violations, 128, "coupon_code")
        _text(event.message_id, path, violations, 256, "message_id")
    if event.quantity < 0:
        violations.append(FieldViolation(f"{path}.quantity", "must be zero or more"))
    if event.HasField("product"):
        _check_product(event.product, f"{path}.product", kind in PRODUCT_KINDS, violations)
    elif kind in PRODUCT_KINDS:
        violations.append(FieldViolation(f"{path}.product", f"must be set for {kind.name if kind else 'this type'}"))
    if kind is EventKind.CATEGORY_VIEW and not event.product.category_path:
        violations.append(FieldViolation(f"{path}.product.category_path", "must name the category viewed"))
    if kind is EventKind.SEARCH and not event.search_query.strip():
        violations.append(FieldViolation(f"{path}.search_query", "must not be empty for SEARCH"))
    if kind is EventKind.PURCHASE:
        _check_order(event.order, f"{path}.order", violations)
    if violations:
        raise InvalidArgument(violations)
    assert kind is not None and identifier is not None
    return CheckedEvent(identifier, to_tracked_event(event, kind, at_ms), event)


def _check_order(order: event_pb2.Order, path: str, violations: list[FieldViolation]) -> None:
    if not order.order_id.strip():
        violations.append(FieldViolation(f"{path}.order_id", "must not be empty for PURCHASE"))
    _text(order.order_id, path, violations, 256, "order_id")
    if not order.lines:
        violations.append(FieldViolation(f"{path}.lines", "must hold at least one line"))
    if len(order.lines) > MAX_ORDER_LINES:
        violations.append(FieldViolation(f"{path}.lines", f"must hold at most {MAX_ORDER_LINES} lines"))
    for index, line in enumerate(order.lines):
        _check_product(line.product, f"{path}.lines[{index}].product", True, violations)
        if line.quantity <= 0:
            violations.append(FieldViolation(f"{path}.lines[{index}].quantity", "must be one or more"))
    _money(order.total.amount, f"{path}.total.amount", violations)


def _product(product: event_pb2.ProductRef) -> Product:
    return Product(
        product_id=product.product_id,
        title=product.title,
        category_path=tuple(level.strip() for level in product.category_path),
        brand=product.brand,
        price=product.price.amount,
        currency=product.price.currency_code,
        rating=product.rating,
    )


def to_tracked_event(event: event_pb2.Event, kind: EventKind, at_ms: int) -> TrackedEvent:
    context = event.context
    order = None
    if event.HasField("order"):
        order = Order(
            order_id=event.order.order_id,
            lines=tuple(OrderLine(_product(line.product), line.quantity) for line in event.order.lines),
            total=event.order.total.amount,
            currency=event.order.total.currency_code,
        )
    return TrackedEvent(
        event_id=event.event_id,
        kind=kind,
        time_ms=at_ms,
        context=Context(
            device_type=context.device_type,
            os=context.os,
            browser=context.browser,
            page_url=context.page_url,
            referrer=context.referrer,
            utm_source=context.utm_source,
            utm_medium=context.utm_medium,
            utm_campaign=context.utm_campaign,
            country=context.country.upper(),
            city=context.city,
            language=context.language.lower(),
        ),
        product=_product(event.product) if event.HasField("product") else None,
        quantity=event.quantity,
        search_query=event.search_query.strip(),
        order=order,
        coupon_code=event.coupon_code,
        message_id=event.message_id,
    )


def stored_to_tracked(event: event_pb2.Event) -> TrackedEvent:
    """An event as the log stores it (already validated when it was tracked)."""
    return to_tracked_event(event, EventKind(event.type), event_time_ms(event))
