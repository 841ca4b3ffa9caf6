"""Storage of the identity graph: Cassandra (source of truth) and Redis (cache, event stream)."""
