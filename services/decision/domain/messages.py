"""The message shown with the recommendations: a headline and a body fitting the visitor's
situation, in English or French, from the default templates or the shop's edited ones.

Templates hold named placeholders such as ``{category}``. A line is shown only when every
placeholder in it has a value; otherwise the next candidate is tried: the template's line, its
fallback line, then the default template's line and fallback line (defaults always end with a
fallback without placeholders). So a visitor never sees ``{category}`` nor a sentence with a hole.
An empty line in a shop's template likewise gives way to the default's.
Placeholders are plain names: no attribute or index access, no format spec, no conversion.
"""

from __future__ import annotations

import string
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Final

DEFAULT_LANGUAGE: Final = "en"
SUPPORTED_LANGUAGES: Final = ("en", "fr")
SITUATIONS: Final = ("FIRST_VISIT", "RETURN_VISIT", "ABANDONED_CART", "RECENT_BUYER", "LOYAL_CUSTOMER")

# What the caller may fill in; a typo such as {categroy} is caught when the template is saved.
PLACEHOLDERS: Final = frozenset({"first_name", "category", "favourite_categories", "last_product"})
MAX_HEADLINE_LENGTH: Final = 120
MAX_BODY_LENGTH: Final = 400

FieldError = tuple[str, str]  # (field path, message), as gRPC BadRequest field violations


@dataclass(frozen=True, slots=True)
class MessageTemplate:
    headline: str
    body: str
    # Used when a placeholder of the line above has no value (no category known yet, ...).
    fallback_headline: str = ""
    fallback_body: str = ""


@dataclass(frozen=True, slots=True)
class Message:
    headline: str
    body: str
    language: str  # the language actually used, after falling back to English


_DEFAULTS: Final[Mapping[tuple[str, str], MessageTemplate]] = {
    ("FIRST_VISIT", "en"): MessageTemplate(
        headline="Welcome!",
        body="Trending right now in {category}.",
        fallback_body="Discover what's trending right now.",
    ),
    ("FIRST_VISIT", "fr"): MessageTemplate(
        headline="Bienvenue !",
        body="Les tendances du moment dans la catégorie {category}.",
        fallback_body="Découvrez les tendances du moment.",
    ),
    ("RETURN_VISIT", "en"): MessageTemplate(
        headline="Welcome back, {first_name}!",
        body="New ideas in {category} since your last visit.",
        fallback_headline="Welcome back!",
        fallback_body="Here is what's new since your last visit.",
    ),
    ("RETURN_VISIT", "fr"): MessageTemplate(
        headline="Bon retour parmi nous, {first_name} !",
        body="Du nouveau dans la catégorie {category} depuis votre dernière visite.",
        fallback_headline="Bon retour parmi nous !",
        fallback_body="Voici les nouveautés depuis votre dernière visite.",
    ),
    ("ABANDONED_CART", "en"): MessageTemplate(
        headline="Didn't find what you wanted last time?",
        body="This selection should suit you.",
    ),
    ("ABANDONED_CART", "fr"): MessageTemplate(
        headline="Vous n'avez pas trouvé votre bonheur la dernière fois ?",
        body="Cette sélection devrait vous plaire.",
    ),
    ("RECENT_BUYER", "en"): MessageTemplate(
        headline="To go with your last purchase",
        body="A selection chosen to go with your {last_product}.",
        fallback_body="A selection chosen to complete your order.",
    ),
    ("RECENT_BUYER", "fr"): MessageTemplate(
        headline="Pour aller avec votre dernier achat",
        body="Une sélection pensée pour accompagner votre achat : {last_product}.",
        fallback_body="Une sélection pensée pour compléter votre commande.",
    ),
    ("LOYAL_CUSTOMER", "en"): MessageTemplate(
        headline="Thank you for your loyalty, {first_name}!",
        body="New arrivals in your favourite categories: {favourite_categories}.",
        fallback_headline="Thank you for your loyalty!",
        fallback_body="New arrivals picked for you.",
    ),
    ("LOYAL_CUSTOMER", "fr"): MessageTemplate(
        headline="Merci pour votre fidélité, {first_name} !",
        body="Les nouveautés de vos catégories préférées : {favourite_categories}.",
        fallback_headline="Merci pour votre fidélité !",
        fallback_body="Les nouveautés choisies pour vous.",
    ),
}


def default_template(situation: str, language: str) -> MessageTemplate:
    """The built-in template of a situation in a language (English when not supported)."""
    if situation not in SITUATIONS:
        raise ValueError(f"unknown situation {situation!r}")
    return _DEFAULTS[situation, resolve_language(language)]


def resolve_language(language: str) -> str:
    """ "fr", "FR" or "fr-CA" → "fr"; empty or unsupported → English."""
    primary = language.strip().lower().replace("_", "-").split("-", 1)[0]
    return primary if primary in SUPPORTED_LANGUAGES else DEFAULT_LANGUAGE


def _placeholder_problems(text: str) -> Iterator[str]:
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as error:  # "Single '}' encountered", "unmatched '{'"
        yield f"malformed braces: {error}; write {{{{ and }}}} for literal braces"
        return
    for _, name, format_spec, conversion in parsed:
        if name is None:
            continue
        if not name.isidentifier():
            yield f"placeholder {{{name}}} must be a plain name such as {{category}}, without '.', '[' or position"
        elif name not in PLACEHOLDERS:
            yield f"unknown placeholder {{{name}}}; known: {', '.join(sorted(PLACEHOLDERS))}"
        if format_spec or conversion:
            yield f"placeholder {{{name}}} cannot have a format or conversion"


def validate_template(template: MessageTemplate) -> list[FieldError]:
    """Everything wrong with a template; empty when it can be saved."""
    errors: list[FieldError] = []
    if not template.headline.strip():
        errors.append(("headline", "must not be empty"))
    lines = (
        ("headline", template.headline, MAX_HEADLINE_LENGTH),
        ("body", template.body, MAX_BODY_LENGTH),
        ("fallback_headline", template.fallback_headline, MAX_HEADLINE_LENGTH),
        ("fallback_body", template.fallback_body, MAX_BODY_LENGTH),
    )
    for field_name, text, max_length in lines:
        if len(text) > max_length:
            errors.append((field_name, f"must be at most {max_length} characters, got {len(text)}"))
        errors.extend((field_name, problem) for problem in _placeholder_problems(text))
    return errors


def _render_line(text: str, values: Mapping[str, str]) -> str | None:
    """The line with its placeholders filled, or None when one has no value or the line is
    not a valid template (an override stored before validation must not break a page)."""
    if not text:
        return None
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError:
        return None
    parts: list[str] = []
    # Substituting by hand rather than str.format: no attribute or index lookup can ever run.
    for literal, name, format_spec, conversion in parsed:
        parts.append(literal)
        if name is None:
            continue
        if name not in PLACEHOLDERS or format_spec or conversion:
            return None
        value = values.get(name, "").strip()
        if not value:
            return None
        parts.append(value)
    return "".join(parts)


def _first_rendered(candidates: tuple[str, ...], values: Mapping[str, str]) -> str:
    for candidate in candidates:
        rendered = _render_line(candidate, values)
        if rendered is not None:
            return rendered
    return ""


def render_message(
    situation: str,
    language: str,
    values: Mapping[str, str],
    overrides: Mapping[tuple[str, str], MessageTemplate] | None = None,
) -> Message:
    """The message for a situation: the shop's template for (situation, language) when there is
    one, else the default; `values` fills the placeholders (missing or empty = unknown)."""
    resolved = resolve_language(language)
    default = default_template(situation, resolved)
    override = (overrides or {}).get((situation, resolved))
    headlines: tuple[str, ...] = (default.headline, default.fallback_headline)
    bodies: tuple[str, ...] = (default.body, default.fallback_body)
    if override is not None:
        headlines = (override.headline, override.fallback_headline, *headlines)
        bodies = (override.body, override.fallback_body, *bodies)
    return Message(_first_rendered(headlines, values), _first_rendered(bodies, values), resolved)
