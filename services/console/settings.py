"""Console settings, read once from the environment like every service's (services/common/settings.py),
with the same tracing settings (TracingSettings) and shutdown timing."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.settings import PeerCertificateSettings, TracingSettings, setting


@dataclass(frozen=True)
class ConsoleSettings(TracingSettings, PeerCertificateSettings):
    service_name: str = setting("RAPPORT_SERVICE_NAME", "console", "Name used in logs and traces.")
    host: str = setting("RAPPORT_HOST", "127.0.0.1", "Interface the console's HTTP server binds.")
    port: int = setting("RAPPORT_CONSOLE_PORT", 8060, "HTTP port of the console; 0 picks a free one (tests).")
    log_level: str = setting("RAPPORT_LOG_LEVEL", "info", "debug, info, warning or error.")
    api_keys: str = setting(
        "RAPPORT_API_KEYS",
        "",
        "API keys, as the services read them; a key with scope console.view (or '*') may sign in.",
    )
    session_secret: str = setting(
        "RAPPORT_CONSOLE_SECRET",
        "",
        "Key signing the session cookie (shared by every replica); empty = random per process (dev only).",
    )
    session_hours: float = setting("RAPPORT_CONSOLE_SESSION_HOURS", 8.0, "A sign-in lasts this long.")
    secure_cookie: bool = setting(
        "RAPPORT_CONSOLE_SECURE_COOKIE", False, "Send the session cookie over HTTPS only (set it behind TLS)."
    )
    shutdown_drain_s: float = setting(
        "RAPPORT_SHUTDOWN_DRAIN_S",
        0.0,
        "On SIGTERM, /healthz answers 503 this long while pages are still served (set ~5 s on Kubernetes).",
    )
    shutdown_grace_s: float = setting(
        "RAPPORT_SHUTDOWN_GRACE_S", 5.0, "Then requests in flight get this long to finish."
    )
    rpc_timeout_s: float = setting("RAPPORT_CONSOLE_RPC_TIMEOUT_S", 5.0, "Budget of each call to a service.")
    timeline_page_size: int = setting("RAPPORT_CONSOLE_TIMELINE_PAGE", 50, "Events per page of the timeline.")
    identity_address: str = setting("RAPPORT_IDENTITY_ADDRESS", "127.0.0.1:50051", "host:port of identity.")
    identity_api_key: str = setting(
        "RAPPORT_IDENTITY_API_KEY", "", "Key the console presents to identity (scope identity.resolve)."
    )
    identity_tls_ca_file: str = setting(
        "RAPPORT_IDENTITY_TLS_CA_FILE", "", "PEM CA of identity's certificate; empty = plaintext to identity."
    )
    profile_address: str = setting("RAPPORT_PROFILE_ADDRESS", "127.0.0.1:50052", "host:port of profile.")
    profile_api_key: str = setting(
        "RAPPORT_PROFILE_API_KEY", "", "Key the console presents to profile (scope profile.read)."
    )
    profile_tls_ca_file: str = setting(
        "RAPPORT_PROFILE_TLS_CA_FILE", "", "PEM CA of profile's certificate; empty = plaintext to profile."
    )
    decision_address: str = setting("RAPPORT_DECISION_ADDRESS", "127.0.0.1:50053", "host:port of decision.")
    decision_api_key: str = setting(
        "RAPPORT_DECISION_API_KEY", "", "Key the console presents to decision (scope decision.admin)."
    )
    decision_tls_ca_file: str = setting(
        "RAPPORT_DECISION_TLS_CA_FILE", "", "PEM CA of decision's certificate; empty = plaintext to decision."
    )
    messaging_address: str = setting("RAPPORT_MESSAGING_ADDRESS", "127.0.0.1:50054", "host:port of messaging.")
    messaging_api_key: str = setting(
        "RAPPORT_MESSAGING_API_KEY", "", "Key the console presents to messaging (scope messaging.read)."
    )
    messaging_tls_ca_file: str = setting(
        "RAPPORT_MESSAGING_TLS_CA_FILE", "", "PEM CA of messaging's certificate; empty = plaintext to messaging."
    )
