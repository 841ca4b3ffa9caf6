"""The profile process next to a real identity process: reflection, a JSON call through grpcurl,
and health that follows identity (profile cannot record anything without it)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.cassandra import CassandraClient
from tests.e2e.conftest import ServiceProcess, health_probe, start_service, tool
from tests.support import ADMIN_KEY

pytestmark = pytest.mark.e2e

SERVICE = "rapport.profile.v1.ProfileService"


def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("grpcurl"), *args], capture_output=True, text=True, timeout=20)


@pytest.fixture
def identity_and_profile(
    tmp_path: Path, e2e_keyspace: str, run_id: str, cassandra_admin: CassandraClient
) -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    profile_keyspace = f"e2e_profile_{run_id}"
    cassandra_admin.created_keyspaces.append(profile_keyspace)  # type: ignore[attr-defined]
    prefix = {"RAPPORT_REDIS_PREFIX": f"e2e-profile:{run_id}:"}
    identity = start_service("identity", tmp_path, {"RAPPORT_CASSANDRA_KEYSPACE": e2e_keyspace, **prefix})
    profile = start_service(
        "profile",
        tmp_path,
        {
            "RAPPORT_CASSANDRA_KEYSPACE": profile_keyspace,
            "RAPPORT_IDENTITY_ADDRESS": identity.address,
            "RAPPORT_IDENTITY_API_KEY": ADMIN_KEY,
            **prefix,
        },
    )
    yield identity, profile
    profile.terminate()
    identity.terminate()


def test_profile_tracks_and_describes_through_grpcurl_and_follows_identity_health(
    identity_and_profile: tuple[ServiceProcess, ServiceProcess],
) -> None:
    identity, profile = identity_and_profile
    listed = grpcurl("-plaintext", profile.address, "list")
    assert SERVICE in listed.stdout.split(), listed.stderr
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 60))
    body = {
        "events": [
            {
                "event_id": f"e2e-{i}",
                "event_time": at,
                "type": "EVENT_TYPE_PRODUCT_VIEW",
                "identifier": {"type": "IDENTIFIER_TYPE_COOKIE", "value": "e2e-visitor"},
                "product": {"product_id": f"P{i}", "category_path": ["Home", "Candles"], "price": {"amount": 12}},
            }
            for i in range(3)
        ]
        + [{"event_id": "bad", "type": "EVENT_TYPE_PAGE_VIEW"}]
    }
    auth = f"authorization: Bearer {ADMIN_KEY}"
    tracked = grpcurl("-plaintext", "-H", auth, "-d", json.dumps(body), profile.address, f"{SERVICE}/TrackBatch")
    assert tracked.returncode == 0, tracked.stderr
    reply = json.loads(tracked.stdout)
    assert reply["accepted_count"] == 3 and reply["rejected_count"] == 1
    assert "events[3].event_time" in reply["results"][3]["status"]["message"]
    who = json.dumps({"person": {"identifier": {"type": "IDENTIFIER_TYPE_COOKIE", "value": "e2e-visitor"}}})
    described = grpcurl("-plaintext", "-H", auth, "-d", who, profile.address, f"{SERVICE}/Describe")
    assert described.returncode == 0, described.stderr
    assert json.loads(described.stdout)["sentences"][0] == "1st visit"

    assert health_probe(profile.address).returncode == 0
    identity.terminate()
    deadline = time.monotonic() + 10
    while health_probe(profile.address).returncode == 0 and time.monotonic() < deadline:
        time.sleep(0.3)
    probe = health_probe(profile.address)
    assert probe.returncode != 0 and "NOT_SERVING" in probe.stdout + probe.stderr
