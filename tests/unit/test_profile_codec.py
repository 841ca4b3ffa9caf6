"""Event validation: every oversized or wrong field is named by its path, small events pass."""

from __future__ import annotations

import time

import pytest

from rapport.common.v1 import event_pb2
from rapport.common.v1 import identifier_pb2 as common
from services.common.errors import InvalidArgument
from services.profile.codec import check_event

NOW_MS = int(time.time() * 1000)


def product_view(**context: str) -> event_pb2.Event:
    event = event_pb2.Event(
        event_id="e-1",
        type=event_pb2.EVENT_TYPE_PRODUCT_VIEW,
        identifier=common.Identifier(type=common.IDENTIFIER_TYPE_COOKIE, value="c-1"),
        context=event_pb2.EventContext(**context),  # type: ignore[arg-type]
        product=event_pb2.ProductRef(product_id="P1", category_path=["Women", "Knitwear"]),
    )
    event.event_time.FromMilliseconds(NOW_MS - 1000)
    return event


def fields_of(event: event_pb2.Event) -> list[str]:
    with pytest.raises(InvalidArgument) as error:
        check_event(event, "events[0]", NOW_MS, 300_000, 10**12)
    return [violation.field for violation in error.value.violations]


def test_a_small_valid_event_passes() -> None:
    checked = check_event(product_view(country="fr"), "events[0]", NOW_MS, 300_000, 10**12)
    assert checked.event.product is not None and checked.event.context.country == "FR"


@pytest.mark.parametrize(
    ("context", "field"),
    [
        ({"page_url": "https://shop/" + "p" * 3000}, "events[0].context.page_url"),
        ({"country": "F" * 200}, "events[0].context.country"),
        ({"utm_campaign": "c" * 2100}, "events[0].context.utm_campaign"),
    ],
)
def test_an_oversized_context_field_is_named(context: dict[str, str], field: str) -> None:
    assert fields_of(product_view(**context)) == [field]


def test_oversized_product_fields_are_named() -> None:
    event = product_view()
    event.product.title = "t" * 600
    event.product.category_path[0] = "c" * 300
    assert fields_of(event) == ["events[0].product.title", "events[0].product.category_path[0]"]


def test_multibyte_text_is_measured_in_bytes() -> None:
    # 40 characters of 4 bytes each: 160 bytes, over the 128-byte limit of a city.
    assert fields_of(product_view(city="\U0001f600" * 40)) == ["events[0].context.city"]
    check_event(product_view(city="\U0001f600" * 32), "events[0]", NOW_MS, 300_000, 10**12)
