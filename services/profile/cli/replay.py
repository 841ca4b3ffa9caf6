"""Replays real shop data through the public ProfileService.TrackBatch RPC, as a storefront would.

`python -m services.profile.cli.replay --data /work/shared/data [--limit N] [--datasets online-retail,yoochoose]`

- online-retail (UCI Online Retail): each invoice becomes PRODUCT_VIEW and ADD_TO_CART events per line
  shortly before one PURCHASE, for the customer id (or a guest cookie). Cancellations, returns,
  free lines and invoices made only of fees (postage, bank charges, manual adjustments) are skipped.
- yoochoose (RecSys 2015 click sample): each click becomes a PRODUCT_VIEW of the session's cookie.

Event ids are derived from the data, so a second run is deduplicated by the service rather than
counted twice, and a batch can be retried safely. The mapping from rows to events is pure (plain
values in, protobuf events out) and unit-tested in tests/unit/test_profile_cli.py.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import functools
import gzip
import itertools
import math
import re
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from tqdm import tqdm

from rapport.common.v1 import event_pb2, identifier_pb2
from rapport.profile.v1 import profile_service_pb2 as pb
from rapport.profile.v1 import profile_service_pb2_grpc as pb_grpc
from services.profile.cli import (
    CallFailed,
    add_connection_arguments,
    auth_metadata,
    batch_size_argument,
    call_with_retry,
    read_api_key,
    status_name,
)

ONLINE_RETAIL = "online-retail"
YOOCHOOSE = "yoochoose"
DATASETS = (ONLINE_RETAIL, YOOCHOOSE)
ONLINE_RETAIL_FILE = Path("online-retail/online_retail.csv.gz")
YOOCHOOSE_FILES = (Path("yoochoose-clicks-100k/train.tsv"), Path("yoochoose-clicks-100k/test.tsv"))

CURRENCY = "GBP"  # a UK retailer: every price of the data set is in pounds sterling
SHOWN_REJECTIONS = 3

# ---------------------------------------------------------------------------------------------
# Online Retail: countries and categories the data set does not give in a usable form
# ---------------------------------------------------------------------------------------------

# The data set's country names, as ISO 3166-1 alpha-2. "Channel Islands" (Jersey or Guernsey?),
# "European Community" and "Unspecified" name no single country, so they map to "" (unknown).
COUNTRY_CODES: Mapping[str, str] = {
    "Australia": "AU",
    "Austria": "AT",
    "Bahrain": "BH",
    "Belgium": "BE",
    "Brazil": "BR",
    "Canada": "CA",
    "Cyprus": "CY",
    "Czech Republic": "CZ",
    "Denmark": "DK",
    "EIRE": "IE",
    "Finland": "FI",
    "France": "FR",
    "Germany": "DE",
    "Greece": "GR",
    "Hong Kong": "HK",
    "Iceland": "IS",
    "Israel": "IL",
    "Italy": "IT",
    "Japan": "JP",
    "Lebanon": "LB",
    "Lithuania": "LT",
    "Malta": "MT",
    "Netherlands": "NL",
    "Norway": "NO",
    "Poland": "PL",
    "Portugal": "PT",
    "RSA": "ZA",
    "Saudi Arabia": "SA",
    "Singapore": "SG",
    "Spain": "ES",
    "Sweden": "SE",
    "Switzerland": "CH",
    "USA": "US",
    "United Arab Emirates": "AE",
    "United Kingdom": "GB",
}


def country_code(country: str) -> str:
    """ISO 3166-1 alpha-2 of one of the data set's country names; "" when it names no single country."""
    return COUNTRY_CODES.get(country.strip(), "")


# Department -> the product-type nouns that place a product in it (space-separated, singular, upper
# case, as the descriptions are written). Built from the most frequent nouns of the data set's
# descriptions; it places about 90% of the lines sold. Each noun belongs to one department only.
DEPARTMENT_NOUNS: Mapping[str, str] = {
    "Kitchen & Dining": (
        "MUG CUP TEACUP SAUCER BOWL PLATE JUG TEAPOT BEAKER CUTLERY SPOON TEASPOON FORK KNIFE TRAY GLASS "
        "TUMBLER COASTER PLACEMAT DISH JAR TIN CADDY CONTAINER DISPENSER STRAW CHOPSTICK MOULD CUTTER CASE "
        "CAKESTAND STAND SCALE DOILY TOWEL APRON COSY LUNCHBOX FLASK BRUSH SPATULA GRATER TIMER SQUEEZER "
        "BREADBIN BOARD CANISTER PAN WHISK SIEVE TEA BAKING"
    ),
    "Home": (
        "HOLDER SIGN FRAME CLOCK MIRROR ORNAMENT DECORATION HOOK KNOB DRAWERKNOB DOORSTOP VASE HANGER RACK "
        "CABINET DRAWER SHELF PLAQUE WREATH CHALKBOARD BLACKBOARD MAGNET DOORMAT MAT HEART STAR BELL ANGEL "
        "CHIME LETTER ALPHABET PEG SCREEN CUSHION COVER BLANKET THROW QUILT BOTTLE CUBE BANK STOCKING"
    ),
    "Candles & Lighting": (
        "CANDLE CANDLEHOLDER CANDLESTICK T-LIGHT TEALIGHT LIGHT LANTERN LAMP LAMPSHADE NIGHTLIGHT CHANDELIER INCENSE"
    ),
    "Storage": "BOX BASKET HAMPER TRUNK CRATE BIN CHEST",
    "Bags & Accessories": (
        "BAG SHOPPER PURSE WALLET BACKPACK RUCKSACK TOTE UMBRELLA PARASOL PONCHO SCARF GLOVE MITTEN HAT "
        "SLIPPER WARMER COMB BRACELET NECKLACE EARRING RING CHARM BROOCH CLIP SLIDE BANGLE PENDANT HAIRBAND "
        "KEYRING FOB GLOSS"
    ),
    "Stationery": (
        "NOTEBOOK NOTEPAD PEN PENCIL RULER ERASER RUBBER SKETCHBOOK STICKER TAPE CALENDAR DIARY PAD JOURNAL "
        "STAMP ENVELOPE BOOK NOTECARD BOOKMARK SHARPENER CRAYON CHALK STATIONERY"
    ),
    "Gift Wrap & Cards": "CARD WRAP TAG RIBBON TISSUE PAPER BOW GIFTWRAP",
    "Party": "BUNTING GARLAND BALLOON NAPKIN PARTY CONFETTI INVITE BANNER PINATA CRACKER",
    "Toys & Crafts": (
        "GAME DOMINO PUZZLE JIGSAW DOLL TOY KIT ROPE BALL SOLDIER TEDDY PLAYHOUSE BLOCK MARBLE SKITTLE "
        "SPINNER PUPPET FAN CRAFT FELTCRAFT CLAY STENCIL SLATE"
    ),
    "Garden": "FEEDER BIRDHOUSE GNOME TROWEL SEED HOSE THERMOMETER POT CAN WINDMILL PLANTER MARKER",
}
_DEPARTMENT_OF_NOUN = {noun: department for department, nouns in DEPARTMENT_NOUNS.items() for noun in nouns.split()}
SEASONAL_DEPARTMENT = "Christmas"
_SEASONAL_WORDS = frozenset({"CHRISTMAS", "XMAS"})
FALLBACK_DEPARTMENT = "Gifts"  # the shop calls itself an all-occasion gift retailer
_IRREGULAR_PLURALS = {"DOMINOES": "DOMINO", "MICE": "MOUSE", "KNIVES": "KNIFE", "LEAVES": "LEAF", "SHELVES": "SHELF"}
_DESCRIPTION_WORD = re.compile(r"[A-Z][A-Z'-]*")
_TITLE_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)*")


def singular(word: str) -> str:
    """English plural -> singular for the nouns of the descriptions ('BOXES' -> 'BOX', 'DOILIES' -> 'DOILY').

    Rules, not a dictionary: short words are left alone (so 'BUS', 'GAS' survive), and only a few
    irregular plurals of the data set are listed.
    """
    if word in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[word]
    if len(word) <= 3:
        return word
    if word.endswith("IES"):
        return word[:-3] + "Y"
    if word.endswith(("SSES", "XES", "CHES", "SHES")):
        return word[:-2]
    if word.endswith("S") and not word.endswith("SS"):
        return word[:-1]
    return word


@functools.lru_cache(maxsize=16_384)  # 4 070 products, each on hundreds of lines
def title_case(text: str) -> str:
    """'WHITE HANGING HEART T-LIGHT HOLDER' -> 'White Hanging Heart T-Light Holder'.

    Unlike str.title(), "DOLLY'S" becomes "Dolly's"; runs of spaces collapse to one.
    """
    return _TITLE_WORD.sub(lambda match: match.group(0).capitalize(), " ".join(text.split()))


def derive_category(description: str) -> list[str]:
    """A two-level category path [department, product type] from a product description.

    The data set has no categories, but its descriptions end with (or near) what the product is,
    after colours and designs: 'WHITE HANGING HEART T-LIGHT HOLDER', 'JUMBO BAG RED RETROSPOT'.
    So the words are read from the right and the first one that is a known product-type noun
    (after singularising) gives the type and its department (DEPARTMENT_NOUNS):
    -> ['Home', 'Holder'], ['Bags & Accessories', 'Bag']. Seasonal goods ('CHRISTMAS', 'XMAS'
    anywhere) go to the 'Christmas' department with their type, since that is how the shop sells
    them. A description with no known noun gets ['Gifts'] (or ['Christmas']): a coarse but honest
    category rather than a colour or a design name. Deterministic: the same description always
    gives the same path.
    """
    return list(_category_path(description))


@functools.lru_cache(maxsize=16_384)
def _category_path(description: str) -> tuple[str, ...]:
    words = _DESCRIPTION_WORD.findall(description.upper())
    seasonal = not _SEASONAL_WORDS.isdisjoint(words)  # before singular(), which would cut CHRISTMAS
    for word in map(singular, reversed(words)):
        department = _DEPARTMENT_OF_NOUN.get(word)
        if department is not None:
            return (SEASONAL_DEPARTMENT if seasonal else department, title_case(word))
    return (SEASONAL_DEPARTMENT if seasonal else FALLBACK_DEPARTMENT,)


# ---------------------------------------------------------------------------------------------
# Online Retail: invoice lines -> events
# ---------------------------------------------------------------------------------------------

# Stock codes that are charges or bookkeeping, not goods: they count in what the customer paid
# (the order total) but are neither order lines nor products anyone viewed or put in a cart.
FEE_STOCK_CODES = frozenset({"POST", "DOT", "C2", "M", "D", "S", "B", "BANK CHARGES", "AMAZONFEE", "CRUK"})
CANCELLATION_PREFIX = "C"

# A purchase is preceded by a view of each product a few minutes earlier, then adding it to the
# cart one minute earlier: a plausible storefront session, inside one visit (< 30 min), whose
# events keep the order view -> cart -> purchase whatever the number of lines.
VIEWS_START_MS = 5 * 60_000
VIEWS_SPAN_MS = 3 * 60_000
VIEW_STEP_MS = 10_000
CART_START_MS = 60_000
CART_SPAN_MS = 50_000
CART_STEP_MS = 1_000


@dataclass(frozen=True, slots=True)
class InvoiceLine:
    """One CSV line of an invoice, parsed; `kind` says what the replay does with it."""

    index: int  # position among the invoice's lines in the file: part of stable event ids
    stock_code: str
    description: str
    quantity: int
    unit_price: float
    time_ms: int
    kind: str  # "product", "fee" or "skip"


@dataclass(frozen=True, slots=True)
class InvoiceReplay:
    """What one invoice becomes: events in time order, and how many of its lines were skipped."""

    events: list[event_pb2.Event]
    skipped_lines: int


def line_kind(row: Mapping[str, str]) -> str:
    """'product' (sold goods), 'fee' (postage, charges: only in the total) or 'skip'.

    Skipped: cancellations (invoice 'C…'), returns and corrections (quantity <= 0), free or
    negative prices (unit price <= 0), and lines that do not parse.
    """
    if row["InvoiceNo"].startswith(CANCELLATION_PREFIX):
        return "skip"
    try:
        quantity = float(row["Quantity"])
        unit_price = float(row["UnitPrice"])
        invoice_time_ms(row["InvoiceDate"])
    except ValueError:
        return "skip"
    if quantity <= 0 or not quantity.is_integer() or unit_price <= 0 or not math.isfinite(unit_price):
        return "skip"
    return "fee" if row["StockCode"].strip().upper() in FEE_STOCK_CODES else "product"


@functools.lru_cache(maxsize=65_536)  # about 23 000 distinct invoice times, each on many lines
def invoice_time_ms(invoice_date: str) -> int:
    """'2010-12-01 08:26:00' -> Unix milliseconds; the data set gives no zone, UTC is assumed."""
    moment = datetime.fromisoformat(invoice_date.strip()).replace(tzinfo=UTC)
    return int(moment.timestamp()) * 1000


def customer_identifier(customer_id: str, invoice_no: str) -> identifier_pb2.Identifier:
    """The shop's customer id ('17850.0' in the file -> '17850'); a guest gets a cookie per invoice."""
    customer_id = customer_id.strip()
    if customer_id.endswith(".0") and customer_id[:-2].isdigit():  # the file was written from floats
        customer_id = customer_id[:-2]
    if customer_id:
        return identifier_pb2.Identifier(type=identifier_pb2.IDENTIFIER_TYPE_CUSTOMER_ID, value=customer_id)
    return identifier_pb2.Identifier(type=identifier_pb2.IDENTIFIER_TYPE_COOKIE, value=f"guest-{invoice_no}")


def timestamp(time_ms: int) -> Timestamp:
    return Timestamp(seconds=time_ms // 1000, nanos=(time_ms % 1000) * 1_000_000)


def _parse_line(index: int, row: Mapping[str, str]) -> InvoiceLine:
    kind = line_kind(row)
    if kind == "skip":
        return InvoiceLine(index, "", "", 0, 0.0, 0, kind)
    return InvoiceLine(
        index=index,
        stock_code=row["StockCode"].strip(),
        description=row["Description"].strip(),
        quantity=int(float(row["Quantity"])),
        unit_price=float(row["UnitPrice"]),
        time_ms=invoice_time_ms(row["InvoiceDate"]),
        kind=kind,
    )


def invoice_events(rows: Sequence[Mapping[str, str]]) -> InvoiceReplay:
    """All the lines of one invoice (CSV rows as dicts, in file order) -> its events.

    For each product line, a PRODUCT_VIEW a few minutes before the purchase and an ADD_TO_CART one
    minute before; then one PURCHASE whose total is sum(quantity x unit price) over product and fee
    lines (what was charged). Ids: 'or-<invoice>-<line>-view', 'or-<invoice>-<line>-cart',
    'or-<invoice>-purchase'. An invoice with no product line gives no event at all.
    """
    if not rows:
        return InvoiceReplay([], 0)
    invoice_no = rows[0]["InvoiceNo"].strip()
    lines = [_parse_line(index, row) for index, row in enumerate(rows)]
    products = [line for line in lines if line.kind == "product"]
    if not products:
        return InvoiceReplay([], len(rows))
    skipped = sum(1 for line in lines if line.kind == "skip")
    charged = [line for line in lines if line.kind != "skip"]
    # An invoice's lines may straddle a minute: the purchase happened when its last line was keyed.
    purchase_ms = max(line.time_ms for line in charged)
    identifier = customer_identifier(rows[0]["CustomerID"], invoice_no)
    context = event_pb2.EventContext(country=country_code(rows[0]["Country"]))

    refs = [
        event_pb2.ProductRef(
            product_id=line.stock_code,
            title=title_case(line.description),
            category_path=derive_category(line.description),
            price=event_pb2.Money(currency_code=CURRENCY, amount=line.unit_price),
        )
        for line in products
    ]
    view_step = min(VIEW_STEP_MS, VIEWS_SPAN_MS // len(products))
    cart_step = min(CART_STEP_MS, CART_SPAN_MS // len(products))
    events = [
        event_pb2.Event(
            event_id=f"or-{invoice_no}-{line.index}-view",
            event_time=timestamp(purchase_ms - VIEWS_START_MS + position * view_step),
            type=event_pb2.EVENT_TYPE_PRODUCT_VIEW,
            identifier=identifier,
            context=context,
            product=ref,
        )
        for position, (line, ref) in enumerate(zip(products, refs, strict=True))
    ]
    events += [
        event_pb2.Event(
            event_id=f"or-{invoice_no}-{line.index}-cart",
            event_time=timestamp(purchase_ms - CART_START_MS + position * cart_step),
            type=event_pb2.EVENT_TYPE_ADD_TO_CART,
            identifier=identifier,
            context=context,
            product=ref,
            quantity=line.quantity,
        )
        for position, (line, ref) in enumerate(zip(products, refs, strict=True))
    ]
    total = round(sum(line.quantity * line.unit_price for line in charged), 2)
    order = event_pb2.Order(
        order_id=invoice_no,
        lines=[
            event_pb2.OrderLine(product=ref, quantity=line.quantity) for line, ref in zip(products, refs, strict=True)
        ],
        total=event_pb2.Money(currency_code=CURRENCY, amount=total),
    )
    events.append(
        event_pb2.Event(
            event_id=f"or-{invoice_no}-purchase",
            event_time=timestamp(purchase_ms),
            type=event_pb2.EVENT_TYPE_PURCHASE,
            identifier=identifier,
            context=context,
            order=order,
        )
    )
    return InvoiceReplay(events, skipped)


@dataclass
class InvoiceCensus:
    """First pass over the file: lines per invoice (to know when an invoice is complete) and the
    number of events the replay will send (for the progress bar)."""

    lines_per_invoice: Counter[str] = field(default_factory=Counter)
    product_lines: int = 0
    invoices_with_products: set[str] = field(default_factory=set)

    def add(self, row: Mapping[str, str]) -> None:
        invoice_no = row["InvoiceNo"].strip()
        self.lines_per_invoice[invoice_no] += 1
        if line_kind(row) == "product":
            self.product_lines += 1
            self.invoices_with_products.add(invoice_no)

    @property
    def event_count(self) -> int:
        """Two events per product line (view, cart) and one purchase per invoice: see invoice_events."""
        return 2 * self.product_lines + len(self.invoices_with_products)


def group_invoices(
    rows: Iterable[Mapping[str, str]], lines_per_invoice: Mapping[str, int]
) -> Iterator[list[Mapping[str, str]]]:
    """Yield each invoice's rows once all of them have been read.

    The file is nearly grouped by invoice, but not quite (an invoice can reappear further down);
    waiting for the counted number of lines sends each order once and whole, while holding only
    the invoices still open in memory.
    """
    open_invoices: dict[str, list[Mapping[str, str]]] = {}
    for row in rows:
        invoice_no = row["InvoiceNo"].strip()
        lines = open_invoices.setdefault(invoice_no, [])
        lines.append(row)
        if len(lines) >= lines_per_invoice.get(invoice_no, 0):
            yield open_invoices.pop(invoice_no)
    yield from open_invoices.values()  # only when the counts were off (file changed between passes)


def read_online_retail_rows(path: Path) -> Iterator[dict[str, str]]:
    with gzip.open(path, "rt", encoding="utf-8", newline="") as stream:
        yield from csv.DictReader(stream)


@dataclass
class SourceTally:
    """What a source read but did not turn into events."""

    skipped: int = 0


def online_retail_events(
    path: Path, lines_per_invoice: Mapping[str, int], tally: SourceTally
) -> Iterator[event_pb2.Event]:
    """Stream the file's invoices as events, counting skipped lines in `tally`."""
    for rows in group_invoices(read_online_retail_rows(path), lines_per_invoice):
        replay = invoice_events(rows)
        tally.skipped += replay.skipped_lines
        yield from replay.events


# ---------------------------------------------------------------------------------------------
# YOOCHOOSE clicks -> PRODUCT_VIEW
# ---------------------------------------------------------------------------------------------


def click_event(session_id: str, item_id: str, time_seconds: str, click_index: int) -> event_pb2.Event:
    """One YOOCHOOSE click (session, item, Unix seconds with a fraction) -> a PRODUCT_VIEW.

    The session is the only identity the data has, so it becomes a cookie 'yc-<session>'; the
    click's position in its session makes the id ('yc-<session>-<index>') stable across runs.
    """
    session_id, item_id = session_id.strip(), item_id.strip()
    if not session_id or not item_id:
        raise ValueError("a click needs a session id and an item id")
    time_ms = round(float(time_seconds) * 1000)
    return event_pb2.Event(
        event_id=f"yc-{session_id}-{click_index}",
        event_time=timestamp(time_ms),
        type=event_pb2.EVENT_TYPE_PRODUCT_VIEW,
        identifier=identifier_pb2.Identifier(type=identifier_pb2.IDENTIFIER_TYPE_COOKIE, value=f"yc-{session_id}"),
        product=event_pb2.ProductRef(product_id=item_id),
    )


def read_click_rows(path: Path) -> Iterator[list[str]]:
    with path.open(encoding="utf-8", newline="") as stream:
        rows = csv.reader(stream, delimiter="\t")
        header = next(rows, None)
        if header is not None and header[:1] != ["SessionId"]:
            yield header  # no header line after all: the first line is a click
        yield from rows


def yoochoose_events(paths: Sequence[Path], tally: SourceTally) -> Iterator[event_pb2.Event]:
    """Clicks of every file in order (train then test); malformed rows are counted in `tally`."""
    clicks_per_session: Counter[str] = Counter()
    for path in paths:
        for row in read_click_rows(path):
            if len(row) < 3:
                tally.skipped += 1
                continue
            session_id = row[0].strip()
            try:
                event = click_event(session_id, row[1], row[2], clicks_per_session[session_id])
            except ValueError:
                tally.skipped += 1
                continue
            clicks_per_session[session_id] += 1
            yield event


def count_click_rows(paths: Sequence[Path]) -> int:
    return sum(1 for path in paths for _ in read_click_rows(path))


# ---------------------------------------------------------------------------------------------
# Sending
# ---------------------------------------------------------------------------------------------


@dataclass
class ReplayTally:
    """The outcome of replaying one data set."""

    dataset: str
    events: int = 0
    rejected: int = 0
    duplicates: int = 0
    skipped: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        rate = self.events / self.seconds if self.seconds > 0 else 0.0
        return (
            f"replayed dataset={self.dataset} events={self.events} seconds={self.seconds:.1f} "
            f"events_per_s={rate:.0f} rejected={self.rejected} duplicates={self.duplicates} skipped={self.skipped}"
        )


@dataclass
class RejectionLog:
    """Counts rejected events and keeps the first few reasons to show."""

    shown: list[str] = field(default_factory=list)
    limit: int = SHOWN_REJECTIONS

    def record(self, response: pb.TrackBatchResponse, tally: ReplayTally) -> None:
        for result in response.results:
            if result.status.code != 0:
                tally.rejected += 1
                if len(self.shown) < self.limit:
                    message = f"rejected {result.event_id}: {status_name(result.status.code)}: {result.status.message}"
                    self.shown.append(message)
                    tqdm.write(message, file=sys.stderr)
            elif result.duplicate:
                tally.duplicates += 1


def batches(events: Iterable[event_pb2.Event], size: int) -> Iterator[list[event_pb2.Event]]:
    iterator = iter(events)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


async def send_events(
    stub: pb_grpc.ProfileServiceAsyncStub,
    events: Iterable[event_pb2.Event],
    tally: ReplayTally,
    *,
    total: int,
    batch_size: int,
    concurrency: int,
    metadata: tuple[tuple[str, str], ...],
    timeout: float,
    rejections: RejectionLog,
) -> None:
    """Send `events` in TrackBatch calls, `concurrency` batches in flight at most.

    A bounded queue keeps the reader at most a few batches ahead of the server; a failed batch
    (after retries) cancels the others through the task group.
    """
    queue: asyncio.Queue[list[event_pb2.Event] | None] = asyncio.Queue(maxsize=2 * concurrency)

    with tqdm(total=total, desc=tally.dataset, unit="event", unit_scale=True, dynamic_ncols=True) as progress:

        async def send_batches() -> None:
            while (batch := await queue.get()) is not None:
                request = pb.TrackBatchRequest(events=batch)

                async def track(request: pb.TrackBatchRequest = request) -> pb.TrackBatchResponse:
                    response: pb.TrackBatchResponse = await stub.TrackBatch(request, metadata=metadata, timeout=timeout)
                    return response

                response = await call_with_retry(track, what=f"TrackBatch of {len(batch)} {tally.dataset} events")
                tally.events += len(batch)
                rejections.record(response, tally)
                progress.update(len(batch))
                if tally.rejected:
                    progress.set_postfix(rejected=tally.rejected, refresh=False)

        async def read_batches() -> None:
            for batch in batches(events, batch_size):
                await queue.put(batch)
            for _ in range(concurrency):
                await queue.put(None)

        started = time.perf_counter()
        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(concurrency):
                    group.create_task(send_batches())
                group.create_task(read_batches())
        except BaseExceptionGroup as group_failure:
            # The caller wants the reason, not the task group's wrapping of it.
            failures = [error for error in group_failure.exceptions if isinstance(error, CallFailed)]
            if failures:
                raise failures[0] from None
            raise
        finally:
            tally.seconds = time.perf_counter() - started


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def dataset_list(text: str) -> list[str]:
    """argparse type for --datasets: a comma-separated subset of DATASETS, order kept."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in DATASETS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"choose among {', '.join(DATASETS)}")
    return list(dict.fromkeys(names))


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m services.profile.cli.replay",
        description="Replay public shop data (UCI Online Retail, YOOCHOOSE clicks) through ProfileService.TrackBatch.",
    )
    parser.add_argument(
        "--data", type=Path, required=True, help="folder holding online-retail/ and yoochoose-clicks-100k/"
    )
    add_connection_arguments(parser)
    parser.add_argument("--limit", type=positive_int, help="send at most this many events per data set")
    parser.add_argument("--batch-size", type=batch_size_argument, default=500, help="events per TrackBatch (1..1000)")
    parser.add_argument("--concurrency", type=positive_int, default=4, help="TrackBatch calls in flight")
    parser.add_argument(
        "--datasets", type=dataset_list, default=list(DATASETS), help=f"comma-separated, among {','.join(DATASETS)}"
    )
    return parser.parse_args(argv)


@dataclass
class Source:
    """A data set ready to stream: its events, how many there will be, what it skipped."""

    events: Iterator[event_pb2.Event]
    total: int
    tally: SourceTally


def open_source(dataset: str, data: Path) -> Source:
    tally = SourceTally()
    if dataset == ONLINE_RETAIL:
        path = data / ONLINE_RETAIL_FILE
        census = InvoiceCensus()
        for row in tqdm(read_online_retail_rows(path), desc=f"{dataset} (reading)", unit="line", leave=False):
            census.add(row)
        return Source(online_retail_events(path, census.lines_per_invoice, tally), census.event_count, tally)
    paths = [data / path for path in YOOCHOOSE_FILES]
    return Source(yoochoose_events(paths, tally), count_click_rows(paths), tally)


async def replay(arguments: argparse.Namespace, tallies: list[ReplayTally]) -> None:
    """Replay each chosen data set in turn, appending its tally (even a partial one) to `tallies`."""
    metadata = auth_metadata(read_api_key(arguments.api_key, arguments.api_key_file))
    rejections = RejectionLog()
    async with grpc.aio.insecure_channel(arguments.address) as channel:
        # The async stub exists only in the generated .pyi (the overload for an aio channel); grpc is untyped.
        stub = cast("pb_grpc.ProfileServiceAsyncStub", pb_grpc.ProfileServiceStub(channel))
        for dataset in arguments.datasets:
            tally = ReplayTally(dataset)
            tallies.append(tally)
            source = open_source(dataset, arguments.data)
            events: Iterator[event_pb2.Event] = source.events
            total = source.total
            if arguments.limit is not None:
                events = itertools.islice(events, arguments.limit)
                total = min(total, arguments.limit)
            try:
                await send_events(
                    stub,
                    events,
                    tally,
                    total=total,
                    batch_size=arguments.batch_size,
                    concurrency=arguments.concurrency,
                    metadata=metadata,
                    timeout=arguments.timeout,
                    rejections=rejections,
                )
            finally:
                tally.skipped = source.tally.skipped
            print(tally.summary(), flush=True)


def total_tally(tallies: Sequence[ReplayTally]) -> ReplayTally:
    return ReplayTally(
        dataset="total",
        events=sum(tally.events for tally in tallies),
        rejected=sum(tally.rejected for tally in tallies),
        duplicates=sum(tally.duplicates for tally in tallies),
        skipped=sum(tally.skipped for tally in tallies),
        seconds=sum(tally.seconds for tally in tallies),
    )


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    missing = [
        str(arguments.data / path)
        for dataset, paths in ((ONLINE_RETAIL, (ONLINE_RETAIL_FILE,)), (YOOCHOOSE, YOOCHOOSE_FILES))
        if dataset in arguments.datasets
        for path in paths
        if not (arguments.data / path).is_file()
    ]
    if missing:
        print(f"missing data files: {', '.join(missing)}", file=sys.stderr)
        return 2
    tallies: list[ReplayTally] = []
    try:
        asyncio.run(replay(arguments, tallies))
    except CallFailed as failure:
        print(f"replay stopped: {failure}", file=sys.stderr)
        outcome = 1
    except KeyboardInterrupt:
        print("replay interrupted", file=sys.stderr)
        outcome = 130
    else:
        outcome = 0
    if outcome and tallies:  # what did land before the stop, since a re-run only adds the rest
        print(f"{tallies[-1].summary()} (partial)")
    print(total_tally(tallies).summary())
    return outcome


if __name__ == "__main__":
    sys.exit(main())
