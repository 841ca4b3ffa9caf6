"""Exactly one email when the messaging process is killed (-9) in the middle of sending it, for
an abandoned-cart trigger fired three times: identity, profile, decision and messaging run as
processes, the SMTP server is real (aiosmtpd) and holds the transaction so the kill lands in it."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from rapport.common.v1 import event_pb2
from rapport.common.v1 import identifier_pb2 as common
from rapport.messaging.v1 import messaging_service_pb2 as pb
from rapport.messaging.v1 import messaging_service_pb2_grpc as pb_grpc
from rapport.profile.v1 import profile_service_pb2 as profile_pb
from rapport.profile.v1 import profile_service_pb2_grpc as profile_grpc
from services.common.cassandra import CassandraClient
from tests.e2e.conftest import ServiceProcess, start_four_services, start_service
from tests.support import ADMIN_KEY, SmtpReceiver, bearer, wait_until

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(
    "kill_point",
    [
        # Before the message is handed over: the restarted process sends it.
        "while the server holds RCPT",
        # After the server kept the message, before its 250 reached the sender: the restarted
        # process finds the hand-over record and does not send it again.
        "after the server kept the message, before its reply",
    ],
)
def test_messaging_killed_mid_send_delivers_the_abandoned_cart_email_exactly_once(
    tmp_path: Path, e2e_keyspace: str, run_id: str, cassandra_admin: CassandraClient, kill_point: str
) -> None:
    held_after_data = kill_point.startswith("after")
    smtp = SmtpReceiver().start()
    services: list[ServiceProcess] = []
    try:
        four = start_four_services(
            tmp_path,
            "messaging",
            run_id,
            e2e_keyspace,
            cassandra_admin,
            smtp.port,
            services,
            messaging_env={"RAPPORT_MESSAGING_CLAIM_IDLE_MS": "1500"},
        )
        profile, messaging = four.profile, four.messaging

        with grpc.insecure_channel(messaging.address) as channel, grpc.insecure_channel(profile.address) as tracked:
            stub = pb_grpc.MessagingServiceStub(channel)
            profiles = profile_grpc.ProfileServiceStub(tracked)
            stub.UpdateRule(
                pb.UpdateRuleRequest(
                    rule=pb.Rule(
                        kind=pb.TRIGGER_KIND_ABANDONED_CART, enabled=True, delay_seconds=1, channels=[pb.CHANNEL_EMAIL]
                    )
                ),
                metadata=bearer(ADMIN_KEY),
            )
            visitor = common.Identifier(type=common.IDENTIFIER_TYPE_COOKIE, value=f"e2e-crash-{uuid.uuid4().hex[:8]}")
            email = f"crash-{uuid.uuid4().hex[:8]}@example.com"
            selector = pb.PersonSelector(identifier=visitor)
            person = stub.SetContact(pb.SetContactRequest(person=selector, email=email), metadata=bearer(ADMIN_KEY))
            stub.SetConsent(
                pb.SetConsentRequest(person=selector, channel=pb.CHANNEL_EMAIL, state=pb.CONSENT_STATE_GRANTED),
                metadata=bearer(ADMIN_KEY),
            )
            # The send hangs in the SMTP transaction: the kill lands there.
            if held_after_data:
                smtp.data_reply_delay_s = 30.0
            else:
                smtp.rcpt_delay_s = 30.0
            for _ in range(3):  # the same cart, three times
                at = Timestamp()
                at.FromMilliseconds(int(time.time() * 1000))
                event = event_pb2.Event(
                    event_id=uuid.uuid4().hex,
                    type=event_pb2.EVENT_TYPE_ADD_TO_CART,
                    event_time=at,
                    identifier=visitor,
                    quantity=1,
                    product=event_pb2.ProductRef(
                        product_id="E2E-SKU",
                        title="Cashmere sweater",
                        category_path=["Women", "Knitwear"],
                        price=event_pb2.Money(currency_code="EUR", amount=129.0),
                    ),
                )
                profiles.Track(profile_pb.TrackRequest(event=event), metadata=bearer(ADMIN_KEY))
            if held_after_data:
                wait_until(lambda: len(smtp.to(email)) == 1, 30, "the server to keep the message", every_s=0.1)
            else:
                wait_until(lambda: smtp.rcpt_seen >= 1, 30, "the send to start", every_s=0.1)
            messaging.process.kill()
            messaging.process.wait(10)
            assert len(smtp.to(email)) == (1 if held_after_data else 0)
            smtp.rcpt_delay_s = 0.0
            smtp.data_reply_delay_s = 0.0
        messaging = start_service("messaging", tmp_path, four.messaging_env)
        services.append(messaging)
        wait_until(lambda: len(smtp.to(email)) >= 1, 30, "the email after the restart", every_s=0.1)

        def cart_deliveries() -> list[pb.Delivery]:
            with grpc.insecure_channel(messaging.address) as channel:
                listed = pb_grpc.MessagingServiceStub(channel).ListDeliveries(
                    pb.ListDeliveriesRequest(person=pb.PersonSelector(person_id=person.person_id)),
                    metadata=bearer(ADMIN_KEY),
                )
            return [d for d in listed.deliveries if d.kind == pb.TRIGGER_KIND_ABANDONED_CART]

        # The restarted process takes the delivery over once the killed one's lease has run out.
        wait_until(
            lambda: [d.status for d in cart_deliveries()] == [pb.DELIVERY_STATUS_SENT],
            30,
            "the delivery recorded sent",
            every_s=0.1,
        )
        time.sleep(3.0)  # a duplicate would arrive in this time
        assert len(smtp.to(email)) == 1
        carts = cart_deliveries()
        assert len(carts) == 1 and carts[0].status == pb.DELIVERY_STATUS_SENT
        assert smtp.to(email)[0]["Message-ID"] == f"<{carts[0].delivery_id}@rapport>"
    finally:
        for service in reversed(services):
            if service.process.poll() is None:
                service.terminate()
        smtp.stop()
