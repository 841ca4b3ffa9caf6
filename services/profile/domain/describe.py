"""The visitor in a few short sentences ("2nd visit; focused on premium cashmere sweaters, as in
the 1st visit; hesitating between two products"), in English or French, for a sales assistant
or a CRM screen. Every word comes from the language tables below: adding a language is adding
a table."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from services.profile.domain.folding import DAY_MS, MINUTE_MS
from services.profile.domain.state import ProfileState, SessionState
from services.profile.domain.traits import QUALITY_SEEKING, Trait, category_label
from services.profile.domain.view import PREMIUM, PriceBands, cart_view

DEFAULT_ABANDON_AFTER_MS = 30 * MINUTE_MS

# The focus of a visit needs two views of its top category, and at least half of the visit's
# category views: one glance at a sweater is not a focus.
FOCUS_MIN_VIEWS = 2
FOCUS_MIN_SHARE = 0.5


@dataclass(frozen=True)
class LanguageTable:
    """Everything a language needs: its phrases, and the few rules that are not phrases."""

    phrases: Mapping[str, str]
    ordinal: Callable[[int], str]
    # Whether a count takes the singular ("1 item"; French also says "0 article").
    singular: Callable[[int], bool]
    decimal_point: str
    thousands_separator: str


def _english_ordinal(n: int) -> str:
    # 11th, 12th, 13th (and 111th...) break the 1st/2nd/3rd rule of their last digit.
    suffix = "th" if n % 100 in (11, 12, 13) else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _french_ordinal(n: int) -> str:
    # "visite" is feminine: 1re, then 2e, 3e...
    return "1re" if n == 1 else f"{n}e"


ENGLISH = LanguageTable(
    phrases={
        "visit": "{ordinal} visit",
        "back_after": "back after {days} days",
        "focus": "focused on {category}",
        "focus_band": "focused on {band} {category}",
        "band_budget": "budget",
        "band_mid": "mid-range",
        "band_premium": "premium",
        "as_in_visit": "as in the {ordinal} visit",
        "as_in_previous": "as in the previous visit",
        "as_in_every": "as in every visit so far",
        "hesitating": "hesitating between {count} products",
        "number_2": "two",
        "number_3": "three",
        "review_sensitive": "sensitive to reviews",
        "promo_sensitive": "sensitive to promotions",
        "quality_seeking": "looking for quality",
        "decisive": "decisive",
        "browsing": "browsing",
        "cart": "{items} in the cart ({value})",
        "cart_abandoned": "abandoned cart with {items} ({value})",
        "items_one": "{n} item",
        "items_other": "{n} items",
        "bought_once": "bought once, {when}",
        "bought_times": "bought {n} times, last {when}",
        "today": "today",
        "yesterday": "yesterday",
        "days_ago": "{days} days ago",
        "source_PAID": "came from a paid campaign",
        "source_EMAIL": "came from an e-mail",
        "source_SOCIAL": "came from social media",
        "source_ORGANIC_SEARCH": "came from a search engine",
        "source_REFERRAL": "came from another website",
    },
    ordinal=_english_ordinal,
    singular=lambda n: n == 1,
    decimal_point=".",
    thousands_separator=",",
)

FRENCH = LanguageTable(
    phrases={
        "visit": "{ordinal} visite",
        "back_after": "de retour après {days} jours",
        # A colon rather than "centré sur les ...": no gender to guess for the visitor, and no
        # article to agree with a category label we do not translate.
        "focus": "intérêt principal : {category}",
        "focus_band": "intérêt principal : {category} {band}",
        "band_budget": "petit prix",
        "band_mid": "milieu de gamme",
        "band_premium": "haut de gamme",
        "as_in_visit": "comme lors de la {ordinal} visite",
        "as_in_previous": "comme lors de la visite précédente",
        "as_in_every": "comme à chaque visite",
        "hesitating": "hésite entre {count} produits",
        "number_2": "deux",
        "number_3": "trois",
        "review_sensitive": "sensible aux avis",
        "promo_sensitive": "sensible aux promotions",
        "quality_seeking": "recherche la qualité",
        "decisive": "se décide vite",
        "browsing": "flâne dans le catalogue",
        "cart": "{items} dans le panier ({value})",
        "cart_abandoned": "panier abandonné avec {items} ({value})",
        "items_one": "{n} article",
        "items_other": "{n} articles",
        "bought_once": "a acheté une fois, {when}",
        "bought_times": "a acheté {n} fois, la dernière {when}",
        "today": "aujourd'hui",
        "yesterday": "hier",
        "days_ago": "il y a {days} jours",
        "source_PAID": "visite issue d'une campagne payante",
        "source_EMAIL": "visite issue d'un e-mail",
        "source_SOCIAL": "visite issue des réseaux sociaux",
        "source_ORGANIC_SEARCH": "visite issue d'un moteur de recherche",
        "source_REFERRAL": "visite issue d'un autre site",
    },
    ordinal=_french_ordinal,
    singular=lambda n: n < 2,
    decimal_point=",",
    thousands_separator="\u202f",  # the narrow no-break space French typography puts in 1 249,00
)

LANGUAGES: Mapping[str, LanguageTable] = {"en": ENGLISH, "fr": FRENCH}


def describe(
    state: ProfileState,
    traits: Sequence[Trait],
    now_ms: int,
    bands: PriceBands,
    language: str = "en",
    *,
    abandon_after_ms: int = DEFAULT_ABANDON_AFTER_MS,
) -> list[str]:
    """Short sentences on the visitor, most telling first: the visit, its focus, the traits (in
    the order given, strongest first from `detect_traits`), the cart, purchases, the source.

    "this visit" is the state's last session, even if it has ended: it is the visitor's latest.
    `language` is "en" or "fr" (a region such as "fr-CA" is ignored); anything else is a ValueError.
    """
    table = language_table(language)
    say = table.phrases
    sentences: list[str] = []
    session = state.session
    if session is not None and state.visit_count:
        sentences.append(say["visit"].format(ordinal=table.ordinal(state.visit_count)))
        if state.previous_visit_ms:
            days_away = (session.start_ms - state.previous_visit_ms) // DAY_MS
            if days_away > 1:
                sentences.append(say["back_after"].format(days=days_away))
    focus = _focus(state, session, bands, table) if session is not None else None
    if focus is not None:
        sentences.append(focus.sentence)
    for trait in traits:
        # "focused on premium ..." already says it; saying "looking for quality" again is noise.
        if trait.name == QUALITY_SEEKING and focus is not None and focus.band == PREMIUM:
            continue
        sentence = _trait_sentence(trait, table)
        if sentence:
            sentences.append(sentence)
    cart = _cart_sentence(state, now_ms, abandon_after_ms, table)
    if cart:
        sentences.append(cart)
    if state.order_count:
        sentences.append(_buyer_sentence(state, now_ms, table))
    if session is not None and f"source_{session.traffic_source}" in say:
        sentences.append(say[f"source_{session.traffic_source}"])
    return sentences


def language_table(language: str) -> LanguageTable:
    primary = language.strip().lower().replace("_", "-").partition("-")[0]
    table = LANGUAGES.get(primary)
    if table is None:
        raise ValueError(f"unsupported language {language!r}; supported: {', '.join(sorted(LANGUAGES))}")
    return table


# ------------------------------------------------------------------------------------- focus
@dataclass(frozen=True)
class _Focus:
    sentence: str
    band: str | None


def top_category(session: SessionState) -> str:
    """The visit's most viewed category, with the tie rule `folding` uses for past visits, so
    "as in the 1st visit" compares like with like."""
    if not session.categories:
        return ""
    return max(session.categories.items(), key=lambda item: (item[1], item[0]))[0]


def _focus(state: ProfileState, session: SessionState, bands: PriceBands, table: LanguageTable) -> _Focus | None:
    category = top_category(session)
    if not category:
        return None
    views = session.categories[category]
    if views < FOCUS_MIN_VIEWS or views < FOCUS_MIN_SHARE * sum(session.categories.values()):
        return None
    say = table.phrases
    band = _session_band(session, category, bands)
    label = category_label(category)
    sentence = (
        say["focus_band"].format(band=say[f"band_{band}"], category=label)
        if band
        else say["focus"].format(category=label)
    )
    as_before = _as_before(state, category, table)
    return _Focus(f"{sentence}, {as_before}" if as_before else sentence, band)


def _session_band(session: SessionState, category: str, bands: PriceBands) -> str | None:
    """The band holding most of the visit's priced views, read in the top category's prices.

    The session keeps price buckets for the whole visit, not per category: a stray view in
    another category is read with the wrong prices, which the majority rule absorbs.
    """
    counts: dict[str, int] = {}
    for bucket, views in session.price_buckets.items():
        band = bands.band_of(category, int(bucket))
        if band is not None:
            counts[band] = counts.get(band, 0) + views
    if not counts:
        return None
    band, views = max(counts.items(), key=lambda item: (item[1], item[0]))
    return band if views * 2 > sum(counts.values()) else None


def _as_before(state: ProfileState, category: str, table: LanguageTable) -> str:
    past = state.past_visits
    matches = [index for index, visit in enumerate(past) if visit.top_category == category]
    if not matches:
        return ""
    say = table.phrases
    # `past_visits` keeps the last few visits only; the first of them is visit number:
    first_kept = state.visit_count - len(past)
    if len(matches) == len(past) >= 2 and first_kept == 1:
        return say["as_in_every"]
    latest = matches[-1]
    ordinal = first_kept + latest
    if ordinal == 1:
        return say["as_in_visit"].format(ordinal=table.ordinal(1))
    if latest == len(past) - 1:
        return say["as_in_previous"]
    return say["as_in_visit"].format(ordinal=table.ordinal(ordinal))


# ------------------------------------------------------------------------------------- traits
def _trait_sentence(trait: Trait, table: LanguageTable) -> str:
    say = table.phrases
    if trait.name == "hesitating":
        count = len(trait.product_ids)
        return say["hesitating"].format(count=say.get(f"number_{count}", str(count)))
    # Traits this version does not know how to say (a newer detector) are left out, not shown raw.
    return say.get(trait.name, "")


# ------------------------------------------------------------------------------------- cart, orders
def _cart_sentence(state: ProfileState, now_ms: int, abandon_after_ms: int, table: LanguageTable) -> str:
    cart = cart_view(state, now_ms, abandon_after_ms)
    if not cart.lines:
        return ""
    quantity = sum(line.quantity for _, line in cart.lines)
    items = _plural(table, "items", quantity).format(n=quantity)
    value = _money(cart.value, cart.currency, table)
    return table.phrases["cart_abandoned" if cart.abandoned else "cart"].format(items=items, value=value)


def _buyer_sentence(state: ProfileState, now_ms: int, table: LanguageTable) -> str:
    say = table.phrases
    days = max(0, (now_ms - state.last_purchase_ms) // DAY_MS)
    when = say["today"] if days == 0 else say["yesterday"] if days == 1 else say["days_ago"].format(days=days)
    if state.order_count == 1:
        return say["bought_once"].format(when=when)
    return say["bought_times"].format(n=state.order_count, when=when)


# ------------------------------------------------------------------------------------- numbers
def _plural(table: LanguageTable, key: str, n: int) -> str:
    return table.phrases[f"{key}_one" if table.singular(n) else f"{key}_other"]


def _money(value: float, currency: str, table: LanguageTable) -> str:
    english = f"{value:,.2f}"
    # Swap through a placeholder: English and French use "," and "." the other way round.
    number = english.replace(",", "\0").replace(".", table.decimal_point).replace("\0", table.thousands_separator)
    return f"{number} {currency}" if currency else number
