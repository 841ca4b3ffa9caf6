"""Where a session's traffic came from, from its referrer and UTM parameters (GA-style rules)."""

from __future__ import annotations

from urllib.parse import urlsplit

SEARCH_ENGINES = ("google.", "bing.", "yahoo.", "duckduckgo.", "baidu.", "yandex.", "ecosia.", "qwant.", "ask.")
SOCIAL_NETWORKS = (
    "facebook.",
    "fb.",
    "instagram.",
    "twitter.",
    "t.co",
    "x.com",
    "linkedin.",
    "lnkd.in",
    "pinterest.",
    "tiktok.",
    "youtube.",
    "reddit.",
    "snapchat.",
    "whatsapp.",
)
PAID_MEDIUMS = frozenset({"cpc", "ppc", "paid", "paidsearch", "paid_search", "display", "cpm", "banner", "paid_social"})
EMAIL_MEDIUMS = frozenset({"email", "e-mail", "newsletter", "push", "sms"})
SOCIAL_MEDIUMS = frozenset({"social", "social-network", "social-media", "sm", "social_network"})


def _matches(host: str, names: tuple[str, ...]) -> bool:
    """'google.' matches google.com and news.google.fr; 't.co' matches t.co and x.t.co only."""
    for name in names:
        if name.endswith("."):
            if host.startswith(name) or f".{name}" in f".{host}":
                return True
        elif host == name or host.endswith("." + name):
            return True
    return False


def host_of(url: str) -> str:
    try:
        host = urlsplit(url if "//" in url else f"//{url}").hostname or ""
    except ValueError:
        return ""
    return host.lower().removeprefix("www.")


def classify_traffic(referrer: str, utm_source: str, utm_medium: str, own_host: str = "") -> str:
    """DIRECT, ORGANIC_SEARCH, PAID, SOCIAL, EMAIL or REFERRAL.

    UTM parameters win over the referrer (a campaign link says what it is); a referrer from the
    shop's own site is no source at all (direct).
    """
    medium = utm_medium.strip().lower()
    if medium in PAID_MEDIUMS:
        return "PAID"
    if medium in EMAIL_MEDIUMS:
        return "EMAIL"
    if medium in SOCIAL_MEDIUMS:
        return "SOCIAL"
    if medium == "organic":
        return "ORGANIC_SEARCH"
    host = host_of(referrer) if referrer else ""
    if own_host and host and (host == own_host or host.endswith("." + own_host)):
        host = ""
    source = utm_source.strip().lower()
    if host:
        if _matches(host, SEARCH_ENGINES):
            return "ORGANIC_SEARCH"
        if _matches(host, SOCIAL_NETWORKS):
            return "SOCIAL"
        return "REFERRAL"
    if source:
        if any(source.startswith(network.rstrip(".")) for network in SOCIAL_NETWORKS):
            return "SOCIAL"
        if source in ("newsletter", "email"):
            return "EMAIL"
        return "REFERRAL"
    return "DIRECT"
