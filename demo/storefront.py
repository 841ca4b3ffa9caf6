"""make demo: the whole suite on real data, as a storefront would use it.

With the stack up (`make run`), it
1. imports the products of the first invoices of the real Online Retail data into the decision
   catalog (titles and categories derived from the descriptions, as the replay does);
2. replays those invoices (views, carts, purchases of real customers) through profile's
   TrackBatch, so trending, co-purchases and sessions are learnt from them;
3. walks a few real customers through their own real invoices again, shifted to today: for each
   step it prints what profile's Describe says, the situation decision sees, its message and its
   recommendations, as they change along the visit;
4. gives a visitor an email address and consent, leaves a cart behind, and shows the
   abandoned-cart email that messaging sends to the local SMTP sink;
5. prints the staff console's page of each of these visitors (RAPPORT_CONSOLE_URL, default
   http://127.0.0.1:8060, which `make run` starts).

    python -m demo.storefront [--data ../shared/data] [--invoices 1000] [--visitors 3]
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Sequence
from email import message_from_bytes, policy
from itertools import islice
from pathlib import Path

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from rapport.common.v1 import event_pb2, identifier_pb2
from rapport.decision.v1 import decision_service_pb2 as decision_pb
from rapport.decision.v1 import decision_service_pb2_grpc as decision_grpc
from rapport.messaging.v1 import messaging_service_pb2 as messaging_pb
from rapport.messaging.v1 import messaging_service_pb2_grpc as messaging_grpc
from rapport.profile.v1 import profile_service_pb2 as profile_pb
from rapport.profile.v1 import profile_service_pb2_grpc as profile_grpc
from services.profile.cli.replay import (
    CURRENCY,
    ONLINE_RETAIL_FILE,
    derive_category,
    invoice_events,
    read_online_retail_rows,
    title_case,
)

REPO = Path(__file__).resolve().parents[1]
E = event_pb2.EventType
STEP_KINDS = {
    E.EVENT_TYPE_PRODUCT_VIEW: "views",
    E.EVENT_TYPE_ADD_TO_CART: "adds to cart",
    E.EVENT_TYPE_PURCHASE: "buys",
}


def first_invoices(data: Path, count: int) -> list[list[dict[str, str]]]:
    invoices: dict[str, list[dict[str, str]]] = {}
    for row in read_online_retail_rows(data / ONLINE_RETAIL_FILE):
        number = row["InvoiceNo"]
        if number not in invoices and len(invoices) >= count:
            break
        invoices.setdefault(number, []).append(row)
    return list(invoices.values())


def catalog(invoices: list[list[dict[str, str]]]) -> list[decision_pb.CatalogProduct]:
    products: dict[str, decision_pb.CatalogProduct] = {}
    for rows in invoices:
        for row in rows:
            code = row["StockCode"].strip()
            try:
                price = float(row["UnitPrice"])
            except ValueError:
                continue
            if code in products or price <= 0 or not row["Description"].strip():
                continue
            products[code] = decision_pb.CatalogProduct(
                product_id=code,
                title=title_case(row["Description"]),
                category_path=derive_category(row["Description"]),
                brand="",
                price=event_pb2.Money(currency_code=CURRENCY, amount=price),
                stock=100,
            )
    return list(products.values())


def shifted(event: event_pb2.Event, offset_ms: int, tag: str) -> event_pb2.Event:
    """The event as a new visitor's (a fresh customer id per demo run), moved in time."""
    moved = event_pb2.Event()
    moved.CopyFrom(event)
    moved.event_id = f"{event.event_id}-{tag}"
    moved.identifier.value = f"demo-{tag}-{event.identifier.value}"
    at = event.event_time.ToMilliseconds() + offset_ms
    moved.event_time.CopyFrom(Timestamp(seconds=at // 1000, nanos=(at % 1000) * 1_000_000))
    return moved


class Storefront:
    def __init__(self, key: str) -> None:
        self.metadata = (("authorization", f"Bearer {key}"),)
        self.profile = profile_grpc.ProfileServiceStub(grpc.insecure_channel("127.0.0.1:50052"))
        self.decision = decision_grpc.DecisionServiceStub(grpc.insecure_channel("127.0.0.1:50053"))
        self.messaging = messaging_grpc.MessagingServiceStub(grpc.insecure_channel("127.0.0.1:50054"))

    def track(self, events: Sequence[event_pb2.Event]) -> list[str]:
        persons: list[str] = []
        for start in range(0, len(events), 500):
            reply = self.profile.TrackBatch(
                profile_pb.TrackBatchRequest(events=list(events[start : start + 500])),
                metadata=self.metadata,
                timeout=60,
            )
            persons += [result.person_id for result in reply.results]
        return persons

    def show(self, person_id: str, placement: decision_pb.Placement.ValueType, product_id: str = "") -> None:
        selector = profile_pb.PersonSelector(person_id=person_id)
        described = self.profile.Describe(
            profile_pb.DescribeRequest(person=selector), metadata=self.metadata, timeout=10
        )
        decision = self.decision.Decide(
            decision_pb.DecideRequest(
                person_id=person_id, placement=placement, count=4, page=decision_pb.PageContext(product_id=product_id)
            ),
            metadata=self.metadata,
            timeout=2,
        )
        print(f"      profile  : {'; '.join(described.sentences) or '(nothing yet)'}")
        print(
            f"      decision : {decision_pb.Situation.Name(decision.situation).removeprefix('SITUATION_')}"
            f" → {decision.message.headline} {decision.message.body}"
        )
        for item in decision.items:
            print(
                f"                 · {item.title} ({item.price.amount:.2f} {item.price.currency_code}) — {item.reason}"
            )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--invoices", type=int, default=1000)
    parser.add_argument("--visitors", type=int, default=3)
    arguments = parser.parse_args(argv)
    key = os.environ.get("RAPPORT_DEMO_KEY") or (REPO / ".state" / "dev-api-key").read_text().strip()
    shop = Storefront(key)

    invoices = first_invoices(arguments.data, arguments.invoices)
    products = catalog(invoices)
    for start in range(0, len(products), 5000):
        shop.decision.ImportCatalog(
            decision_pb.ImportCatalogRequest(products=products[start : start + 5000]),
            metadata=shop.metadata,
            timeout=60,
        )
    print(f"1. catalog: {len(products)} real products imported into decision")

    by_customer: dict[str, list[list[event_pb2.Event]]] = defaultdict(list)
    history: list[event_pb2.Event] = []
    for rows in invoices:
        events = invoice_events(rows).events
        if not events:
            continue
        history += events
        if events[0].identifier.type == identifier_pb2.IDENTIFIER_TYPE_CUSTOMER_ID:
            by_customer[events[0].identifier.value].append(events)
    started = time.monotonic()
    shop.track(history)
    took = time.monotonic() - started
    print(f"2. history: {len(history)} events of {len(invoices)} real invoices replayed in {took:.1f} s")

    # Customers with at least two invoices, most active first: their visits are worth watching.
    regulars = [customer for customer, visits in by_customer.items() if len(visits) >= 2]
    regulars.sort(key=lambda customer: -sum(len(visit) for visit in by_customer[customer]))
    print(
        f"3. {min(arguments.visitors, len(regulars))} real customers' first two invoices, replayed as a new"
        " visitor's visits (three days ago, then now):"
    )
    run = uuid.uuid4().hex[:6]
    narrated: list[tuple[str, str]] = []  # (who, person id)
    for customer in islice(regulars, arguments.visitors):
        visits = by_customer[customer][:2]
        first_ms = visits[0][0].event_time.ToMilliseconds()
        offset = int(time.time() * 1000) - 3 * 86_400_000 - first_ms  # the first visit three days ago
        print(f"\n   customer {customer}")
        person = ""
        for number, visit in enumerate(visits, start=1):
            if number == 2:  # the second visit happens now, whatever the gap in the data
                offset = int(time.time() * 1000) - 10 * 60_000 - visit[0].event_time.ToMilliseconds()
            moved = [shifted(event, offset, run) for event in visit]
            print(f"    visit {number}:")
            kinds = Counter(event.type for event in moved)
            for kind in (E.EVENT_TYPE_PRODUCT_VIEW, E.EVENT_TYPE_ADD_TO_CART, E.EVENT_TYPE_PURCHASE):
                step = [event for event in moved if event.type == kind]
                if not step:
                    continue
                person = shop.track(step)[-1]
                what = step[-1].product.title if kind != E.EVENT_TYPE_PURCHASE else f"order {step[-1].order.order_id}"
                print(f"     {STEP_KINDS[kind]} x{kinds[kind]} (last: {what})")
                placement = (
                    decision_pb.PLACEMENT_PRODUCT if kind == E.EVENT_TYPE_PRODUCT_VIEW else decision_pb.PLACEMENT_HOME
                )
                shop.show(person, placement, step[-1].product.product_id if kind == E.EVENT_TYPE_PRODUCT_VIEW else "")
        if person:
            narrated.append((f"customer {customer}", person))

    # 4. The visitor who leaves a cart behind gets an email (if messaging runs).
    try:
        narrated.append(("the visitor with the abandoned cart", abandoned_cart_email(shop, products, run)))
    except grpc.RpcError as error:
        print(f"\n4. messaging not reachable ({error.code().name}): no email shown")
    console = os.environ.get("RAPPORT_CONSOLE_URL", "http://127.0.0.1:8060").rstrip("/")
    print(f"\n5. the staff console (sign in with the dev API key, {REPO / '.state' / 'dev-api-key'}):")
    for who, person in narrated:
        print(f"   {who}: {console}/people/{person}")
    print(f"   segments and experiments: {console}/segments")
    return 0


def abandoned_cart_email(shop: Storefront, products: list[decision_pb.CatalogProduct], run: str) -> str:
    """Leaves a cart behind for a visitor with an email address and consent; their person id."""
    mail = REPO / ".state" / "mail"
    before = set(mail.glob("*.eml")) if mail.exists() else set()
    shop.messaging.UpdateRule(
        messaging_pb.UpdateRuleRequest(
            rule=messaging_pb.Rule(
                kind=messaging_pb.TRIGGER_KIND_ABANDONED_CART,
                enabled=True,
                delay_seconds=5,
                channels=[messaging_pb.CHANNEL_EMAIL],
            )
        ),
        metadata=shop.metadata,
    )
    identifier = identifier_pb2.Identifier(type=identifier_pb2.IDENTIFIER_TYPE_COOKIE, value=f"demo-{run}")
    selector = messaging_pb.PersonSelector(identifier=identifier)
    shop.messaging.SetContact(
        messaging_pb.SetContactRequest(person=selector, email="camille@example.com", language="fr", country="US"),
        metadata=shop.metadata,
    )
    shop.messaging.SetConsent(
        messaging_pb.SetConsentRequest(
            person=selector, channel=messaging_pb.CHANNEL_EMAIL, state=messaging_pb.CONSENT_STATE_GRANTED
        ),
        metadata=shop.metadata,
    )
    product = products[0]
    at = int(time.time() * 1000)
    person = shop.track(
        [
            event_pb2.Event(
                event_id=f"demo-{run}-cart",
                type=E.EVENT_TYPE_ADD_TO_CART,
                event_time=Timestamp(seconds=at // 1000),
                identifier=identifier,
                quantity=1,
                product=event_pb2.ProductRef(
                    product_id=product.product_id,
                    title=product.title,
                    category_path=list(product.category_path),
                    price=product.price,
                ),
            )
        ]
    )[0]
    print(f"\n4. a visitor (camille@example.com, French) leaves {product.title} in the cart; waiting for the email…")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        fresh = set(mail.glob("*.eml")) - before if mail.exists() else set()
        for path in fresh:
            message = message_from_bytes(path.read_bytes(), policy=policy.default)
            if message["To"] == "camille@example.com":
                text = message.get_body(("plain",))
                print(f"   email in {path}:\n   Subject: {message['Subject']}")
                body = text.get_content() if text is not None else ""  # type: ignore[attr-defined]
                for line in body.splitlines()[:12]:
                    print(f"   | {line}")
                return person
        time.sleep(0.5)
    print("   (no email within 30 s: quiet hours in the visitor's time zone, or messaging is not running)")
    return person


if __name__ == "__main__":
    raise SystemExit(main())
