"""The staff console: a web page per customer (the single customer view) and the segments and
experiments, read from the four services over gRPC, behind a Rapport API key."""
