"""The staff console in a real headless Chromium (Debian's chromium + chromedriver, driven by
Selenium), in front of identity, profile, decision and messaging running as processes on the real
Redis and Cassandra. A visitor is seeded through the public RPCs (identifiers, views, a cart, a
purchase, a sign-up email with consent, decisions); then staff sign in (a wrong key first), search
an identifier nobody has (no such person, and none created), search the visitor and read their
page, then the segments and experiments. Screenshots are kept under
.state/artefacts/console/."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from rapport.common.v1 import event_pb2
from rapport.common.v1 import identifier_pb2 as common
from rapport.decision.v1 import decision_service_pb2 as decision_pb
from rapport.decision.v1 import decision_service_pb2_grpc as decision_grpc
from rapport.identity.v1 import identity_service_pb2 as identity_pb
from rapport.identity.v1 import identity_service_pb2_grpc as identity_grpc
from rapport.messaging.v1 import messaging_service_pb2 as messaging_pb
from rapport.messaging.v1 import messaging_service_pb2_grpc as messaging_grpc
from rapport.profile.v1 import profile_service_pb2 as profile_pb
from rapport.profile.v1 import profile_service_pb2_grpc as profile_grpc
from services.common.cassandra import CassandraClient
from tests.e2e.conftest import ServiceProcess, start_four_services
from tests.support import ADMIN_KEY, API_KEYS, REPO, SmtpReceiver, bearer, free_port, wait_until

pytestmark = pytest.mark.e2e

STAFF_KEY = "rk_test_staff_" + uuid.uuid4().hex[:16]
CONSOLE_KEYS = f"{API_KEYS};staff:{STAFF_KEY}:console.view"
ARTEFACTS = Path(os.environ.get("RAPPORT_STATE", REPO / ".state")) / "artefacts" / "console"
KNITWEAR = ["Women", "Knitwear"]
MINUTE_MS = 60_000


@dataclass
class Visitor:
    cookie: str
    customer_id: str
    person_id: str
    sentences: list[str]
    decision: decision_pb.DecideResponse
    order_id: str
    segment_id: str
    experiment_id: str


def chromium_paths() -> tuple[str, str]:
    browser = shutil.which("chromium")
    driver = shutil.which("chromedriver")
    assert browser and driver, "chromium and chromium-driver are installed by `make test` (scripts/browser.sh install)"
    return browser, driver


def at_ms(ms: int) -> Timestamp:
    stamp = Timestamp()
    stamp.FromMilliseconds(ms)
    return stamp


def product(pid: str, title: str, price: float) -> event_pb2.ProductRef:
    return event_pb2.ProductRef(
        product_id=pid,
        title=title,
        category_path=KNITWEAR,
        brand="Maison Laine",
        price=event_pb2.Money(currency_code="EUR", amount=price),
    )


def start_console(tmp_path: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str, Path]:
    port = free_port()
    log_path = tmp_path / f"console-{port}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [str(REPO / ".venv/bin/python"), "-m", "services.console"],
            cwd=REPO,
            env={
                **os.environ,
                "PYTHONPATH": f"{REPO}:{REPO / 'gen'}",
                "RAPPORT_CONSOLE_PORT": str(port),
                "RAPPORT_API_KEYS": CONSOLE_KEYS,
                "RAPPORT_CONSOLE_SECRET": "e2e-console-secret-" + uuid.uuid4().hex,
                **env,
            },
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the console exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1) as reply:
                if reply.status == 200:
                    return process, url, log_path
        except OSError:
            time.sleep(0.2)
    process.terminate()
    raise AssertionError(f"the console never answered:\n{log_path.read_text()}")


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, e2e_keyspace: str, run_id: str, cassandra_admin: CassandraClient
) -> Iterator[dict[str, Any]]:
    tmp_path = tmp_path_factory.mktemp("console")
    smtp = SmtpReceiver().start()
    services: list[ServiceProcess] = []
    console: subprocess.Popen[bytes] | None = None
    try:
        four = start_four_services(tmp_path, "console", run_id, e2e_keyspace, cassandra_admin, smtp.port, services)
        console, url, console_log = start_console(tmp_path, four.peers)
        yield {
            "url": url,
            "console_log": console_log,
            "identity": four.identity,
            "profile": four.profile,
            "decision": four.decision,
            "messaging": four.messaging,
            "smtp": smtp,
        }
    finally:
        if console is not None and console.poll() is None:
            console.terminate()
            console.wait(10)
        for service in reversed(services):
            if service.process.poll() is None:
                service.terminate()
        smtp.stop()


@pytest.fixture(scope="module")
def visitor(stack: dict[str, Any]) -> Visitor:
    """A visitor seeded through the public RPCs, as a storefront, a back office and a CRM would."""
    tag = uuid.uuid4().hex[:8]
    cookie = common.Identifier(type=common.IDENTIFIER_TYPE_COOKIE, value=f"console-{tag}")
    customer = common.Identifier(type=common.IDENTIFIER_TYPE_CUSTOMER_ID, value=f"C-{tag}")
    sweater = product(f"SW-{tag}", "Cashmere crew neck", 129.0)
    cardigan = product(f"CA-{tag}", "Merino cardigan", 89.0)
    scarf = product(f"SC-{tag}", "Alpaca scarf", 45.0)
    with (
        grpc.insecure_channel(stack["identity"].address) as identity_channel,
        grpc.insecure_channel(stack["profile"].address) as profile_channel,
        grpc.insecure_channel(stack["decision"].address) as decision_channel,
        grpc.insecure_channel(stack["messaging"].address) as messaging_channel,
    ):
        identity = identity_grpc.IdentityServiceStub(identity_channel)
        profiles = profile_grpc.ProfileServiceStub(profile_channel)
        decisions = decision_grpc.DecisionServiceStub(decision_channel)
        messaging = messaging_grpc.MessagingServiceStub(messaging_channel)
        key = bearer(ADMIN_KEY)

        decisions.ImportCatalog(
            decision_pb.ImportCatalogRequest(
                products=[
                    decision_pb.CatalogProduct(
                        product_id=item.product_id,
                        title=item.title,
                        category_path=list(item.category_path),
                        brand=item.brand,
                        price=item.price,
                        stock=10,
                    )
                    for item in (sweater, cardigan, scarf)
                ]
            ),
            metadata=key,
        )
        segment_id = f"knitwear-{tag}"
        decisions.CreateSegment(
            decision_pb.CreateSegmentRequest(
                segment=decision_pb.Segment(
                    segment_id=segment_id,
                    name="Cart holders",
                    rule="cart_size >= 1",
                    description="Anyone with something in the cart",
                )
            ),
            metadata=key,
        )
        experiment_id = f"lead-{tag}"
        decisions.CreateExperiment(
            decision_pb.CreateExperimentRequest(
                experiment=decision_pb.Experiment(
                    experiment_id=experiment_id,
                    arms=[decision_pb.ExperimentArm(name="bandit", weight=1.0)],
                    holdout_share=0.2,
                    placements=[decision_pb.PLACEMENT_SEARCH],
                )
            ),
            metadata=key,
        )
        identity.Link(identity_pb.LinkRequest(identifiers=[cookie, customer]), metadata=key)
        person = messaging_pb.PersonSelector(identifier=cookie)
        messaging.SetContact(
            messaging_pb.SetContactRequest(person=person, email=f"console-{tag}@example.com", language="en"),
            metadata=key,
        )
        messaging.SetConsent(
            messaging_pb.SetConsentRequest(
                person=person, channel=messaging_pb.CHANNEL_EMAIL, state=messaging_pb.CONSENT_STATE_GRANTED
            ),
            metadata=key,
        )

        # Yesterday: signs up, looks at knitwear, buys a scarf. An hour ago: a sweater into the cart.
        now = int(time.time() * 1000)
        yesterday = now - 26 * 60 * MINUTE_MS
        context = event_pb2.EventContext(
            device_type="mobile", os="Android", browser="Chrome", country="FR", city="Lyon", page_url="/knitwear"
        )
        order = event_pb2.Order(
            order_id=f"O-{tag}",
            lines=[event_pb2.OrderLine(product=scarf, quantity=1)],
            total=event_pb2.Money(currency_code="EUR", amount=45.0),
        )
        steps = [
            (yesterday, event_pb2.EVENT_TYPE_SIGN_UP, {}),
            (yesterday + 1000, event_pb2.EVENT_TYPE_PRODUCT_VIEW, {"product": sweater}),
            (yesterday + 2000, event_pb2.EVENT_TYPE_PRODUCT_VIEW, {"product": cardigan}),
            (yesterday + 3000, event_pb2.EVENT_TYPE_PRODUCT_VIEW, {"product": sweater}),
            (yesterday + 4000, event_pb2.EVENT_TYPE_SEARCH, {"search_query": "alpaca scarf"}),
            (yesterday + 5000, event_pb2.EVENT_TYPE_ADD_TO_CART, {"product": scarf, "quantity": 1}),
            (yesterday + 6000, event_pb2.EVENT_TYPE_PURCHASE, {"order": order}),
            (now - 65 * MINUTE_MS, event_pb2.EVENT_TYPE_PRODUCT_VIEW, {"product": sweater}),
            (now - 64 * MINUTE_MS, event_pb2.EVENT_TYPE_ADD_TO_CART, {"product": sweater, "quantity": 1}),
        ]
        events = [
            event_pb2.Event(
                event_id=f"{tag}-{index}",
                event_time=at_ms(when),
                type=kind,  # type: ignore[arg-type]
                identifier=cookie,
                context=context,
                **fields,
            )
            for index, (when, kind, fields) in enumerate(steps)
        ]
        tracked = profiles.TrackBatch(profile_pb.TrackBatchRequest(events=events), metadata=key, timeout=30)
        assert tracked.rejected_count == 0, [result.status.message for result in tracked.results]
        person_id = tracked.results[0].person_id

        def decided() -> decision_pb.DecideResponse | None:
            reply = decisions.Decide(
                decision_pb.DecideRequest(identifier=cookie, placement=decision_pb.PLACEMENT_HOME, count=3),
                metadata=key,
                timeout=3,
            )
            return reply if reply.situation == decision_pb.SITUATION_ABANDONED_CART and reply.items else None

        decision = wait_until(decided, 20, "an abandoned-cart decision with items")
        decisions.Decide(
            decision_pb.DecideRequest(person_id=person_id, placement=decision_pb.PLACEMENT_SEARCH, count=2),
            metadata=key,
            timeout=3,
        )
        described = profiles.Describe(
            profile_pb.DescribeRequest(person=profile_pb.PersonSelector(person_id=person_id)), metadata=key
        )

        seen: list[str] = []

        def welcome_sent() -> bool:
            listed = messaging.ListDeliveries(
                messaging_pb.ListDeliveriesRequest(person=messaging_pb.PersonSelector(person_id=person_id)),
                metadata=key,
            )
            seen[:] = [
                f"{messaging_pb.TriggerKind.Name(d.kind)} {messaging_pb.DeliveryStatus.Name(d.status)} "
                f"reason={d.reason!r} attempts={d.attempts} error={d.last_error!r}"
                for d in listed.deliveries
            ]
            return any(
                d.kind == messaging_pb.TRIGGER_KIND_WELCOME and d.status == messaging_pb.DELIVERY_STATUS_SENT
                for d in listed.deliveries
            )

        # A cold clean-clone run can retry the first sends (full-jitter backoff) for a while.
        try:
            wait_until(welcome_sent, 60, "the welcome email")
        except AssertionError as timed_out:
            raise AssertionError(f"{timed_out}; the person's deliveries: {seen}") from None
    assert described.sentences
    return Visitor(
        cookie.value,
        customer.value,
        person_id,
        list(described.sentences),
        decision,
        order.order_id,
        segment_id,
        experiment_id,
    )


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = chromium_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(argument)
    options.add_argument("--window-size=1360,900")
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver: Any, name: str, shots: list[Path]) -> None:
    """The whole page, not only the window: the window is stretched to the page's height first."""
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1360, max(900, min(int(height) + 40, 8000)))
    path = ARTEFACTS / f"{name}.png"
    assert driver.save_screenshot(str(path)), f"no screenshot at {path}"
    driver.set_window_size(1360, 900)
    shots.append(path)


def test_staff_sign_in_search_a_visitor_and_read_their_whole_story(
    stack: dict[str, Any], visitor: Visitor, browser: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import Select, WebDriverWait

    url = stack["url"]
    shots: list[Path] = []
    wait = WebDriverWait(browser, 15)

    def text_of(element_id: str) -> str:
        return str(browser.find_element(By.ID, element_id).text)

    try:
        # Not signed in: the person page sends to the sign-in form, and shows nothing of the person.
        browser.get(f"{url}/people/{visitor.person_id}")
        wait.until(expected_conditions.presence_of_element_located((By.ID, "api-key")))
        assert "/login?next=" in browser.current_url
        assert visitor.cookie not in browser.page_source
        screenshot(browser, "01-sign-in", shots)

        browser.find_element(By.ID, "api-key").send_keys("rk_wrong_" + uuid.uuid4().hex)
        browser.find_element(By.ID, "sign-in").click()
        wait.until(expected_conditions.presence_of_element_located((By.ID, "sign-in-error")))
        assert "not valid for the console" in text_of("sign-in-error")
        assert not browser.get_cookies()
        screenshot(browser, "02-wrong-key-refused", shots)

        browser.find_element(By.ID, "api-key").send_keys(STAFF_KEY)
        browser.find_element(By.ID, "sign-in").click()
        wait.until(expected_conditions.presence_of_element_located((By.ID, "person-id")))
        assert browser.current_url == f"{url}/people/{visitor.person_id}"  # back where staff wanted to go
        session = {cookie["name"]: cookie for cookie in browser.get_cookies()}["rapport_console"]
        assert session["httpOnly"] and STAFF_KEY not in session["value"]

        # An identifier identity has never seen finds no one, and the search creates no one.
        never_seen = f"never-seen-{uuid.uuid4().hex[:12]}"
        browser.get(f"{url}/")
        Select(browser.find_element(By.ID, "search-kind")).select_by_value("COOKIE")
        browser.find_element(By.ID, "search-value").send_keys(never_seen)
        browser.find_element(By.ID, "search").click()
        wait.until(expected_conditions.presence_of_element_located((By.ID, "search-error")))
        assert "No such person" in text_of("search-error")
        screenshot(browser, "03-no-such-person", shots)
        with grpc.insecure_channel(stack["identity"].address) as channel:
            with pytest.raises(grpc.RpcError) as raised:
                identity_grpc.IdentityServiceStub(channel).Lookup(
                    identity_pb.LookupRequest(
                        identifier=common.Identifier(type=common.IDENTIFIER_TYPE_COOKIE, value=never_seen)
                    ),
                    metadata=bearer(ADMIN_KEY),
                    timeout=10,
                )
            assert raised.value.code() == grpc.StatusCode.NOT_FOUND

        # Search by the cookie, as staff would with what a customer tells them.
        browser.get(f"{url}/")
        Select(browser.find_element(By.ID, "search-kind")).select_by_value("COOKIE")
        browser.find_element(By.ID, "search-value").send_keys(visitor.cookie)
        screenshot(browser, "04-search", shots)
        browser.find_element(By.ID, "search").click()
        wait.until(expected_conditions.presence_of_element_located((By.ID, "person-id")))
        assert text_of("person-id") == visitor.person_id

        described = text_of("describe")
        for sentence in visitor.sentences:
            assert sentence in described
        identifiers = text_of("identifiers")
        assert visitor.cookie in identifiers and visitor.customer_id in identifiers
        assert "mobile" in identifiers and "Lyon, FR" in identifiers
        cart = text_of("cart")
        assert "Cashmere crew neck" in cart and "129.00 EUR" in cart
        purchases = text_of("purchases")
        assert visitor.order_id in purchases and "45.00 EUR" in purchases
        assert "Women > Knitwear" in text_of("affinities")
        timeline = text_of("timeline")
        for kind in ("Add to cart", "Purchase", "Product view", "Search", "Sign up"):
            assert kind in timeline, kind
        assert "“alpaca scarf”" in timeline

        decisions = text_of("decisions")
        assert "Abandoned cart" in decisions
        assert visitor.decision.message.headline in decisions
        assert visitor.segment_id in decisions
        lead = decision_pb.Strategy.Name(visitor.decision.lead_strategy).removeprefix("STRATEGY_")
        assert lead.replace("_", " ").capitalize() in decisions
        for item in visitor.decision.items:
            assert item.title in decisions and item.reason in decisions
        assert visitor.experiment_id in decisions  # the SEARCH decision, in the experiment
        messages = text_of("messages")
        assert "Welcome" in messages and "Sent" in messages
        consent = text_of("consent")
        assert "Granted" in consent and "Never asked" in consent
        screenshot(browser, "05-person", shots)

        browser.find_element(By.LINK_TEXT, "Français").click()
        wait.until(expected_conditions.text_to_be_present_in_element((By.ID, "describe"), "visite"))

        browser.find_element(By.LINK_TEXT, "Segments & experiments").click()
        wait.until(expected_conditions.presence_of_element_located((By.ID, "experiments")))
        segments = text_of("segments")
        assert visitor.segment_id in segments and "Cart holders" in segments
        experiments = text_of("experiments")
        assert visitor.experiment_id in experiments and "holdout" in experiments and "Search" in experiments
        screenshot(browser, "06-segments-and-experiments", shots)

        browser.find_element(By.ID, "sign-out").click()
        wait.until(expected_conditions.presence_of_element_located((By.ID, "api-key")))
        browser.get(f"{url}/segments")
        wait.until(expected_conditions.presence_of_element_located((By.ID, "api-key")))
        assert visitor.segment_id not in browser.page_source
    except Exception:
        screenshot(browser, "failure", shots)
        print(stack["console_log"].read_text()[-4000:])
        raise
    finally:
        with capsys.disabled():
            print("\nconsole screenshots:\n" + "\n".join(f"  {path}" for path in shots))
