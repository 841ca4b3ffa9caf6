"""The identity service: one person id behind every identifier of a visitor."""
