"""Cassandra schema of the Rapport services on Kubernetes, applied once instead of by every replica.

  python apply_schema.py --apply identity profile messaging   # the cassandra-schema Job
  python apply_schema.py --wait identity                      # a service's init container

Runs inside a Rapport image, with the services' own schema files and Cassandra client, so the
keyspaces and tables are exactly those a service creates with RAPPORT_APPLY_SCHEMA=true. Settings
come from the same RAPPORT_* variables (hosts, port, local DC, replication map, keyspace).
Replicas starting together must not each run the DDL: concurrent CREATE TABLE statements on
different coordinators can leave Cassandra with conflicting table ids.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from pathlib import Path

from services.common.cassandra import CassandraClient, open_service_keyspace
from services.common.settings import CommonSettings, load_settings
from services.identity.adapters.cassandra_store import SCHEMA_FILE as IDENTITY_SCHEMA
from services.identity.settings import IdentitySettings
from services.messaging.adapters.cassandra_store import SCHEMA_FILE as MESSAGING_SCHEMA
from services.messaging.settings import MessagingSettings
from services.profile.adapters.cassandra_log import SCHEMA_FILE as PROFILE_SCHEMA
from services.profile.settings import ProfileSettings

SCHEMAS: dict[str, tuple[type[CommonSettings], Path]] = {
    "identity": (IdentitySettings, IDENTITY_SCHEMA),
    "profile": (ProfileSettings, PROFILE_SCHEMA),
    "messaging": (MessagingSettings, MESSAGING_SCHEMA),
}
_TABLE = re.compile(r"CREATE\s+TABLE\s+IF\s+NOT\s+EXISTS\s+\{keyspace\}\.(\w+)", re.IGNORECASE)


def log(message: str) -> None:
    print(f"apply_schema: {message}", file=sys.stderr, flush=True)


async def connect(settings: CommonSettings, schema_cql: str | None, wait_s: float) -> CassandraClient:
    return await open_service_keyspace(settings, schema_cql, wait_s)


async def apply(service: str, wait_s: float) -> None:
    settings_class, schema_file = SCHEMAS[service]
    settings = load_settings(settings_class)
    client = await connect(settings, schema_file.read_text(), wait_s)
    await client.close()
    log(f"{service}: keyspace {settings.cassandra_keyspace} ready ({settings.cassandra_replication})")


async def wait(service: str, timeout_s: float) -> bool:
    """True once every table of the service's schema file exists in its keyspace."""
    settings_class, schema_file = SCHEMAS[service]
    settings = load_settings(settings_class)
    expected = set(_TABLE.findall(schema_file.read_text()))
    give_up_at = time.monotonic() + timeout_s
    client = await connect(settings, None, timeout_s)
    try:
        while True:
            rows = await client.execute(
                "SELECT table_name FROM system_schema.tables WHERE keyspace_name = ?",
                [settings.cassandra_keyspace],
                timeout_s=10,
            )
            missing = sorted(expected - {row["table_name"] for row in rows})
            if not missing:
                log(f"{service}: all {len(expected)} tables of {settings.cassandra_keyspace} exist")
                return True
            if time.monotonic() > give_up_at:
                log(f"{service}: still missing in {settings.cassandra_keyspace}: {', '.join(missing)}")
                return False
            log(f"{service}: waiting for the cassandra-schema job ({len(missing)} tables missing)")
            await asyncio.sleep(5)
    finally:
        await client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--apply", nargs="+", choices=sorted(SCHEMAS), metavar="SERVICE")
    mode.add_argument("--wait", choices=sorted(SCHEMAS), metavar="SERVICE")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for Cassandra or the tables")
    args = parser.parse_args()
    if args.apply:
        keyspaces = [load_settings(SCHEMAS[name][0]).cassandra_keyspace for name in args.apply]
        if len(set(keyspaces)) != len(keyspaces):
            parser.error(f"services need distinct keyspaces, got {keyspaces} (is RAPPORT_CASSANDRA_KEYSPACE set?)")
        for service in args.apply:
            asyncio.run(apply(service, args.timeout))
        return 0
    return 0 if asyncio.run(wait(args.wait, args.timeout)) else 1


if __name__ == "__main__":
    sys.exit(main())
