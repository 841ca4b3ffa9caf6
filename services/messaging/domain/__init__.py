"""Messaging's pure domain: trigger rules, send policy, signed tokens, templates, audiences and
retries. Plain Python with injected clocks: no network, no Redis, no Cassandra, no gRPC."""
