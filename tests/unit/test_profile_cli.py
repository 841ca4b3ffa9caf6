"""The profile CLIs without a server: data rows -> events and CRM records, batching, retries."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import grpc
import pytest
from google.rpc import status_pb2

from rapport.common.v1 import event_pb2, identifier_pb2
from rapport.profile.v1 import profile_service_pb2 as pb
from services.profile.cli import CallFailed, call_with_retry
from services.profile.cli.import_crm import (
    BadHeader,
    ImportTally,
    RowProblem,
    attribute_name,
    attribute_names,
    crm_record,
    identifier_type,
    import_records,
    read_records,
)
from services.profile.cli.replay import (
    DEPARTMENT_NOUNS,
    InvoiceCensus,
    RejectionLog,
    ReplayTally,
    SourceTally,
    batches,
    click_event,
    country_code,
    derive_category,
    group_invoices,
    invoice_events,
    send_events,
    singular,
    title_case,
    yoochoose_events,
)

CUSTOMER_ID = identifier_pb2.IDENTIFIER_TYPE_CUSTOMER_ID
COOKIE = identifier_pb2.IDENTIFIER_TYPE_COOKIE


def retail_row(
    invoice: str = "536365",
    stock_code: str = "85123A",
    description: str = "WHITE HANGING HEART T-LIGHT HOLDER",
    quantity: str = "6.0",
    date: str = "2010-12-01 08:26:00",
    price: str = "2.55",
    customer: str = "17850.0",
    country: str = "United Kingdom",
) -> dict[str, str]:
    """A line of online_retail.csv.gz as csv.DictReader gives it (numbers as the file writes them)."""
    return {
        "InvoiceNo": invoice,
        "StockCode": stock_code,
        "Description": description,
        "Quantity": quantity,
        "InvoiceDate": date,
        "UnitPrice": price,
        "CustomerID": customer,
        "Country": country,
    }


def seconds(event: event_pb2.Event) -> float:
    return event.event_time.seconds + event.event_time.nanos / 1e9


# --- categories, titles, countries -------------------------------------------------------------


@pytest.mark.parametrize(
    ("description", "path"),
    [
        ("WHITE HANGING HEART T-LIGHT HOLDER", ["Home", "Holder"]),
        ("JUMBO BAG RED RETROSPOT", ["Bags & Accessories", "Bag"]),  # colours and designs after the noun
        ("PACK OF 72 RETROSPOT CAKE CASES", ["Kitchen & Dining", "Case"]),  # plural noun
        ("SET OF 3 WOODEN TREE CHRISTMAS DECORATIONS", ["Christmas", "Decoration"]),
        ("PAPER CHAIN KIT 50'S CHRISTMAS ", ["Christmas", "Kit"]),
        ("CHRISTMAS TOILET ROLL", ["Christmas"]),
        ("JAM MAKING SET PRINTED", ["Gifts"]),  # no product-type noun: no made-up type
        ("", ["Gifts"]),
        ("jumbo bag red retrospot", ["Bags & Accessories", "Bag"]),
    ],
)
def test_category_comes_from_the_rightmost_product_noun(description: str, path: list[str]) -> None:
    assert derive_category(description) == path


def test_category_paths_are_fresh_lists() -> None:
    # The path is cached per description: a caller changing its copy must not change the next answer.
    derive_category("JUMBO BAG RED RETROSPOT").append("Mutated")
    assert derive_category("JUMBO BAG RED RETROSPOT") == ["Bags & Accessories", "Bag"]


def test_each_product_noun_belongs_to_one_department() -> None:
    nouns = [noun for listed in DEPARTMENT_NOUNS.values() for noun in listed.split()]
    assert len(nouns) == len(set(nouns))
    assert all(noun == singular(noun) for noun in nouns), "nouns are looked up after singular()"


@pytest.mark.parametrize(
    ("plural", "single"),
    [
        ("BOXES", "BOX"),
        ("DOILIES", "DOILY"),
        ("GLASSES", "GLASS"),
        ("CASES", "CASE"),
        ("BRUSHES", "BRUSH"),
        ("LIGHTS", "LIGHT"),
        ("DOMINOES", "DOMINO"),
        ("GLASS", "GLASS"),
        ("BUS", "BUS"),
    ],
)
def test_singular(plural: str, single: str) -> None:
    assert singular(plural) == single


def test_titles_keep_apostrophes_and_hyphens_readable() -> None:
    assert title_case("WHITE HANGING HEART T-LIGHT HOLDER") == "White Hanging Heart T-Light Holder"
    assert title_case("DOLLY'S  TEA   SET ") == "Dolly's Tea Set"


@pytest.mark.parametrize(
    ("country", "code"),
    [
        ("United Kingdom", "GB"),
        ("EIRE", "IE"),
        ("RSA", "ZA"),
        ("USA", "US"),
        ("Germany", "DE"),
        ("Channel Islands", ""),
        ("European Community", ""),
        ("Unspecified", ""),
        ("Narnia", ""),
    ],
)
def test_country_names_map_to_iso_codes_or_unknown(country: str, code: str) -> None:
    assert country_code(country) == code


# --- invoices -> events --------------------------------------------------------------------------


def sample_invoice() -> list[dict[str, str]]:
    return [
        retail_row(stock_code="85123A", description="WHITE HANGING HEART T-LIGHT HOLDER", quantity="6.0", price="2.55"),
        retail_row(stock_code="22752", description="SET 7 BABUSHKA NESTING BOXES", quantity="-2.0", price="7.65"),
        retail_row(
            stock_code="71053",
            description="WHITE METAL LANTERN",
            quantity="6.0",
            price="3.39",
            date="2010-12-01 08:27:00",  # the invoice straddles a minute
        ),
        retail_row(stock_code="POST", description="POSTAGE", quantity="1.0", price="18.0"),
    ]


def test_an_invoice_becomes_views_then_cart_adds_then_one_purchase() -> None:
    replay = invoice_events(sample_invoice())

    assert [event.event_id for event in replay.events] == [
        "or-536365-0-view",
        "or-536365-2-view",
        "or-536365-0-cart",
        "or-536365-2-cart",
        "or-536365-purchase",
    ]
    assert [event.type for event in replay.events] == [
        event_pb2.EVENT_TYPE_PRODUCT_VIEW,
        event_pb2.EVENT_TYPE_PRODUCT_VIEW,
        event_pb2.EVENT_TYPE_ADD_TO_CART,
        event_pb2.EVENT_TYPE_ADD_TO_CART,
        event_pb2.EVENT_TYPE_PURCHASE,
    ]
    assert replay.skipped_lines == 1  # the return (quantity -2)
    for event in replay.events:
        assert event.identifier == identifier_pb2.Identifier(type=CUSTOMER_ID, value="17850")
        assert event.context.country == "GB"


def test_purchase_total_counts_fees_but_lines_are_goods_only() -> None:
    purchase = invoice_events(sample_invoice()).events[-1]

    assert purchase.order.order_id == "536365"
    assert [(line.product.product_id, line.quantity) for line in purchase.order.lines] == [("85123A", 6), ("71053", 6)]
    assert purchase.order.total.currency_code == "GBP"
    assert purchase.order.total.amount == pytest.approx(6 * 2.55 + 6 * 3.39 + 18.0)
    holder = purchase.order.lines[0].product
    assert holder.title == "White Hanging Heart T-Light Holder"
    assert list(holder.category_path) == ["Home", "Holder"]
    assert holder.price == event_pb2.Money(currency_code="GBP", amount=2.55)


def test_event_times_keep_view_cart_purchase_order_within_one_visit() -> None:
    events = invoice_events(sample_invoice()).events
    times = [seconds(event) for event in events]

    assert times == sorted(times)
    purchase_time = 1291192020  # 2010-12-01 08:27:00 UTC: the invoice's last line
    assert times[-1] == purchase_time
    assert purchase_time - times[0] == 5 * 60
    assert purchase_time - times[2] == 60  # the first cart add, a minute before
    assert events[2].quantity == 6


def test_many_lines_still_fit_before_the_purchase() -> None:
    rows = [retail_row(stock_code=f"S{index}") for index in range(1000)]
    times = [seconds(event) for event in invoice_events(rows).events]

    assert times == sorted(times)
    assert len(set(times[:1000])) == 1000
    assert len(set(times[1000:2000])) == 1000


def test_replaying_twice_gives_identical_events() -> None:
    # The service deduplicates a re-run by event id, which only works if nothing varies between runs.
    first = [event.SerializeToString(deterministic=True) for event in invoice_events(sample_invoice()).events]
    second = [event.SerializeToString(deterministic=True) for event in invoice_events(sample_invoice()).events]
    assert first == second


def test_guest_orders_get_a_cookie_per_invoice() -> None:
    events = invoice_events([retail_row(invoice="536414", customer="")]).events
    assert {event.identifier.SerializeToString() for event in events} == {
        identifier_pb2.Identifier(type=COOKIE, value="guest-536414").SerializeToString()
    }


@pytest.mark.parametrize(("customer", "value"), [("17850.0", "17850"), (" 17850 ", "17850"), ("VIP-7.0", "VIP-7.0")])
def test_customer_ids_lose_the_float_suffix_the_file_gave_them(customer: str, value: str) -> None:
    purchase = invoice_events([retail_row(customer=customer)]).events[-1]
    assert purchase.identifier == identifier_pb2.Identifier(type=CUSTOMER_ID, value=value)


@pytest.mark.parametrize(
    "rows",
    [
        [retail_row(invoice="C536379", quantity="-1.0"), retail_row(invoice="C536379", quantity="3.0")],  # cancelled
        [retail_row(price="0.0"), retail_row(quantity="0.0")],  # free and empty lines
        [retail_row(stock_code="POST", description="POSTAGE"), retail_row(stock_code="M", description="Manual")],
        [retail_row(quantity="six"), retail_row(quantity="1.5"), retail_row(price="nan"), retail_row(date="soon")],
    ],
    ids=["cancellation", "no-price-or-quantity", "fees-only", "unparsable"],
)
def test_invoices_without_goods_give_no_event(rows: list[dict[str, str]]) -> None:
    replay = invoice_events(rows)
    assert replay.events == []
    assert replay.skipped_lines == len(rows)


def test_census_predicts_the_number_of_events() -> None:
    invoices = [
        sample_invoice(),
        [retail_row(invoice="C1", quantity="-1.0")],
        [retail_row(invoice="2", stock_code="POST")],
        [retail_row(invoice="3", customer=""), retail_row(invoice="3", stock_code="22752")],
    ]
    census = InvoiceCensus()
    for row in (row for invoice in invoices for row in invoice):
        census.add(row)

    assert census.event_count == sum(len(invoice_events(invoice).events) for invoice in invoices) == 5 + 5
    assert census.lines_per_invoice == {"536365": 4, "C1": 1, "2": 1, "3": 2}


def test_an_invoice_is_sent_whole_even_when_its_lines_are_apart() -> None:
    rows = [retail_row(invoice="A", stock_code="1"), retail_row(invoice="B"), retail_row(invoice="A", stock_code="2")]
    grouped = list(group_invoices(rows, {"A": 2, "B": 1}))
    assert [[(row["InvoiceNo"], row["StockCode"]) for row in invoice] for invoice in grouped] == [
        [("B", "85123A")],
        [("A", "1"), ("A", "2")],
    ]


# --- YOOCHOOSE clicks --------------------------------------------------------------------------


def test_a_click_is_a_product_view_of_the_session_cookie() -> None:
    event = click_event("3", "214716935", "1396437466.94", 0)

    assert event.event_id == "yc-3-0"
    assert event.type == event_pb2.EVENT_TYPE_PRODUCT_VIEW
    assert event.identifier == identifier_pb2.Identifier(type=COOKIE, value="yc-3")
    assert event.product.product_id == "214716935"
    assert (event.event_time.seconds, event.event_time.nanos) == (1396437466, 940_000_000)


@pytest.mark.parametrize(("session", "item", "time"), [("", "1", "1.0"), ("3", " ", "1.0"), ("3", "1", "later")])
def test_bad_clicks_are_refused(session: str, item: str, time: str) -> None:
    with pytest.raises(ValueError):
        click_event(session, item, time, 0)


def test_click_files_are_read_in_order_with_a_per_session_index(tmp_path: Path) -> None:
    train = tmp_path / "train.tsv"
    test = tmp_path / "test.tsv"
    train.write_text("SessionId\tItemId\tTime\n1\t10\t100.0\n1\t11\t101.5\n2\t10\t102.0\n2\tbroken\n")
    test.write_text("SessionId\tItemId\tTime\n3\t12\t200.0\n1\t13\t300.0\n")
    tally = SourceTally()

    events = list(yoochoose_events([train, test], tally))

    assert [event.event_id for event in events] == ["yc-1-0", "yc-1-1", "yc-2-0", "yc-3-0", "yc-1-2"]
    assert [event.product.product_id for event in events] == ["10", "11", "10", "12", "13"]
    assert tally.skipped == 1


# --- sending -----------------------------------------------------------------------------------


def test_batches_cut_the_stream_without_losing_events() -> None:
    assert [len(batch) for batch in batches(range(1001), 500)] == [500, 500, 1]  # type: ignore[arg-type]
    assert list(batches([], 500)) == []


class FakeProfileService:
    """Stands in for the async stub: answers TrackBatch and ImportCrm, records what it saw."""

    def __init__(self, reject: set[str] | None = None, duplicates: set[str] | None = None) -> None:
        self.reject = reject or set()
        self.duplicates = duplicates or set()
        self.batch_sizes: list[int] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.metadata: list[object] = []

    async def TrackBatch(
        self, request: pb.TrackBatchRequest, metadata: object, timeout: float
    ) -> pb.TrackBatchResponse:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        self.batch_sizes.append(len(request.events))
        self.metadata.append(metadata)
        await asyncio.sleep(0.001)
        self.in_flight -= 1
        results = []
        for index, event in enumerate(request.events):
            rejected = event.event_id in self.reject
            results.append(
                pb.EventResult(
                    index=index,
                    event_id=event.event_id,
                    duplicate=event.event_id in self.duplicates,
                    status=status_pb2.Status(code=3, message="event_time is missing") if rejected else None,
                )
            )
        return pb.TrackBatchResponse(results=results)

    async def ImportCrm(self, request: pb.ImportCrmRequest, metadata: object, timeout: float) -> pb.ImportCrmResponse:
        self.batch_sizes.append(len(request.records))
        statuses = [
            status_pb2.Status(code=3, message="attribute value too long")
            if record.identifier.value in self.reject
            else status_pb2.Status()
            for record in request.records
        ]
        return pb.ImportCrmResponse(statuses=statuses, imported_count=sum(status.code == 0 for status in statuses))


async def test_events_go_out_in_bounded_concurrent_batches_and_rejections_are_counted() -> None:
    events = [click_event("7", str(item), "100.0", item) for item in range(2300)]
    service = FakeProfileService(reject={"yc-7-5", "yc-7-2000"}, duplicates={"yc-7-1"})
    tally = ReplayTally("yoochoose")
    rejections = RejectionLog(limit=1)

    await send_events(
        service,  # type: ignore[arg-type]
        iter(events),
        tally,
        total=len(events),
        batch_size=500,
        concurrency=3,
        metadata=(("authorization", "Bearer k"),),
        timeout=5,
        rejections=rejections,
    )

    assert sorted(service.batch_sizes) == [300, 500, 500, 500, 500]
    assert 1 < service.most_in_flight <= 3
    assert (tally.events, tally.rejected, tally.duplicates) == (2300, 2, 1)
    assert rejections.shown == ["rejected yc-7-5: INVALID_ARGUMENT: event_time is missing"]
    assert service.metadata[0] == (("authorization", "Bearer k"),)


def rpc_error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="down")


class FlakyCall:
    """Fails with the given codes, in order, then answers."""

    def __init__(self, *codes: grpc.StatusCode) -> None:
        self.codes = list(codes)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.codes:
            raise rpc_error(self.codes.pop(0))
        return "done"


def recording_sleep() -> tuple[list[float], Callable[[float], Awaitable[None]]]:
    delays: list[float] = []

    async def sleep(delay: float) -> None:
        delays.append(delay)

    return delays, sleep


async def test_transient_failures_are_retried_with_growing_back_off() -> None:
    call = FlakyCall(grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED)
    delays, sleep = recording_sleep()

    assert await call_with_retry(call, what="TrackBatch", sleep=sleep) == "done"
    assert call.calls == 4
    assert len(delays) == 3
    assert delays[2] > delays[0]


@pytest.mark.parametrize(
    ("codes", "calls"),
    [
        ((grpc.StatusCode.INVALID_ARGUMENT,), 1),
        ((grpc.StatusCode.UNAUTHENTICATED,), 1),
        ((grpc.StatusCode.UNAVAILABLE,) * 9, 3),
    ],
    ids=["bad-request", "bad-key", "retries-exhausted"],
)
async def test_other_failures_stop_the_run(codes: Sequence[grpc.StatusCode], calls: int) -> None:
    call = FlakyCall(*codes)
    _, sleep = recording_sleep()

    with pytest.raises(CallFailed, match=codes[0].name):
        await call_with_retry(call, what="TrackBatch", attempts=3, sleep=sleep)
    assert call.calls == calls


# --- CRM import --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "name"),
    [
        ("customer_id", "customer_id"),
        ("Loyalty Card", "loyalty_card"),
        (" Tier (2024) ", "tier__2024_"),
        ("Prénom", "pr_nom"),
        ("x" * 100, "x" * 64),
    ],
)
def test_columns_become_attribute_names(column: str, name: str) -> None:
    assert attribute_name(column) == name


@pytest.mark.parametrize(("header", "message"), [(["Tier", "tier"], "both become"), (["id", " "], "no name")])
def test_headers_that_cannot_name_attributes_are_refused(header: list[str], message: str) -> None:
    with pytest.raises(BadHeader, match=message):
        attribute_names(header)


def test_identifier_types_by_short_or_full_name() -> None:
    assert identifier_type("email_sha256") == identifier_pb2.IDENTIFIER_TYPE_EMAIL_SHA256
    assert identifier_type("IDENTIFIER_TYPE_COOKIE") == COOKIE
    with pytest.raises(Exception, match="CUSTOMER_ID"):
        identifier_type("UNSPECIFIED")


def test_a_row_becomes_a_record_without_its_empty_cells() -> None:
    names = ["customer_id", "loyalty_card", "tier", "birthday"]
    record = crm_record(names, [" 17850 ", "LC-991", "", " 1980-04-02 "], "customer_id", CUSTOMER_ID)

    assert record.identifier == identifier_pb2.Identifier(type=CUSTOMER_ID, value="17850")
    assert dict(record.attributes) == {"loyalty_card": "LC-991", "birthday": "1980-04-02"}


def test_the_identifier_column_can_be_anywhere_and_of_any_type() -> None:
    record = crm_record(
        ["tier", "email"], ["GOLD", "Jane@Example.com"], "email", identifier_pb2.IDENTIFIER_TYPE_EMAIL_SHA256
    )
    assert record.identifier.type == identifier_pb2.IDENTIFIER_TYPE_EMAIL_SHA256
    assert dict(record.attributes) == {"tier": "GOLD"}


@pytest.mark.parametrize(
    ("cells", "message"),
    [(["", "GOLD"], "no customer_id"), (["17850", " "], "no attribute"), (["17850", "GOLD", "extra"], "3 cells")],
)
def test_rows_that_cannot_become_records(cells: list[str], message: str) -> None:
    with pytest.raises(RowProblem, match=message):
        crm_record(["customer_id", "tier"], cells, "customer_id", CUSTOMER_ID)


def test_short_rows_are_fine() -> None:
    record = crm_record(["customer_id", "tier", "birthday"], ["1", "GOLD"], "customer_id", CUSTOMER_ID)
    assert dict(record.attributes) == {"tier": "GOLD"}


def test_a_crm_file_is_read_with_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "crm.csv"
    path.write_text('\ufeffCustomer ID,Loyalty Card,Tier\n17850,LC-1,GOLD\n\n,LC-2,SILVER\n"12583","LC-3",\n', "utf-8")
    tally = ImportTally()

    records = list(read_records(path, "customer_id", CUSTOMER_ID, tally))

    assert [(numbered.line, numbered.record.identifier.value) for numbered in records if numbered] == [
        (2, "17850"),
        (5, "12583"),
    ]
    assert records.count(None) == 1
    assert tally.skipped == 1
    assert tally.problems == ["skipped line 4: no customer_id"]


def test_a_file_without_the_identifier_column_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "crm.csv"
    path.write_text("email,tier\njane@example.com,GOLD\n")
    with pytest.raises(BadHeader, match="customer_id"):
        list(read_records(path, "customer_id", CUSTOMER_ID, ImportTally()))


async def test_import_sends_batches_and_reports_rejected_lines(tmp_path: Path) -> None:
    path = tmp_path / "crm.csv"
    path.write_text("customer_id,tier\n" + "".join(f"{number},GOLD\n" for number in range(1, 8)) + ",GOLD\n")
    service = FakeProfileService(reject={"6"})
    tally = ImportTally()

    await import_records(
        service,  # type: ignore[arg-type]
        read_records(path, "customer_id", CUSTOMER_ID, tally),
        tally,
        total=8,
        batch_size=3,
        metadata=(("authorization", "Bearer k"),),
        timeout=5,
    )

    assert service.batch_sizes == [3, 3, 1]
    assert (tally.imported, tally.rejected, tally.skipped) == (6, 1, 1)
    assert "rejected line 7: INVALID_ARGUMENT: attribute value too long" in tally.problems
