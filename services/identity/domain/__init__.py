"""Plain identity logic: identifier normalisation, merge rules, guards. No gRPC, no storage."""
