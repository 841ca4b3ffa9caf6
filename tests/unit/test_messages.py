"""Messages per situation and language: defaults in English and French, placeholders filled or
falling back, shop overrides, and templates that could leak or break rejected."""

from __future__ import annotations

import pytest

from services.decision.domain.messages import (
    SITUATIONS,
    Message,
    MessageTemplate,
    render_message,
    resolve_language,
    validate_template,
)

ALL_VALUES = {
    "first_name": "Camille",
    "category": "sweaters",
    "favourite_categories": "sweaters, scarves",
    "last_product": "merino sweater",
}


@pytest.mark.parametrize(
    ("situation", "language", "headline", "body"),
    [
        ("FIRST_VISIT", "en", "Welcome!", "Trending right now in sweaters."),
        ("FIRST_VISIT", "fr", "Bienvenue !", "Les tendances du moment dans la catégorie sweaters."),
        ("RETURN_VISIT", "en", "Welcome back, Camille!", "New ideas in sweaters since your last visit."),
        (
            "RETURN_VISIT",
            "fr",
            "Bon retour parmi nous, Camille !",
            "Du nouveau dans la catégorie sweaters depuis votre dernière visite.",
        ),
        ("ABANDONED_CART", "en", "Didn't find what you wanted last time?", "This selection should suit you."),
        (
            "ABANDONED_CART",
            "fr",
            "Vous n'avez pas trouvé votre bonheur la dernière fois ?",
            "Cette sélection devrait vous plaire.",
        ),
        ("RECENT_BUYER", "en", "To go with your last purchase", "A selection chosen to go with your merino sweater."),
        (
            "RECENT_BUYER",
            "fr",
            "Pour aller avec votre dernier achat",
            "Une sélection pensée pour accompagner votre achat : merino sweater.",
        ),
        (
            "LOYAL_CUSTOMER",
            "en",
            "Thank you for your loyalty, Camille!",
            "New arrivals in your favourite categories: sweaters, scarves.",
        ),
        (
            "LOYAL_CUSTOMER",
            "fr",
            "Merci pour votre fidélité, Camille !",
            "Les nouveautés de vos catégories préférées : sweaters, scarves.",
        ),
    ],
)
def test_default_message_per_situation_and_language(situation: str, language: str, headline: str, body: str) -> None:
    assert render_message(situation, language, ALL_VALUES) == Message(headline, body, language)


@pytest.mark.parametrize(
    ("situation", "language", "headline", "body"),
    [
        ("FIRST_VISIT", "en", "Welcome!", "Discover what's trending right now."),
        ("RETURN_VISIT", "en", "Welcome back!", "Here is what's new since your last visit."),
        ("RETURN_VISIT", "fr", "Bon retour parmi nous !", "Voici les nouveautés depuis votre dernière visite."),
        (
            "RECENT_BUYER",
            "fr",
            "Pour aller avec votre dernier achat",
            "Une sélection pensée pour compléter votre commande.",
        ),
        ("LOYAL_CUSTOMER", "en", "Thank you for your loyalty!", "New arrivals picked for you."),
        ("LOYAL_CUSTOMER", "fr", "Merci pour votre fidélité !", "Les nouveautés choisies pour vous."),
    ],
)
def test_missing_values_use_the_fallback_line(situation: str, language: str, headline: str, body: str) -> None:
    assert render_message(situation, language, {}) == Message(headline, body, language)
    # A blank value counts as missing too.
    assert render_message(situation, language, {"first_name": "  ", "category": ""}).headline == headline


def test_every_situation_renders_without_placeholders_left_in_both_languages() -> None:
    for situation in SITUATIONS:
        for language in ("en", "fr"):
            for values in ({}, ALL_VALUES):
                message = render_message(situation, language, values)
                assert message.headline
                assert message.body
                assert "{" not in message.headline + message.body


def test_unknown_language_falls_back_to_english_and_regional_variants_resolve() -> None:
    assert render_message("ABANDONED_CART", "de", {}).language == "en"
    assert render_message("ABANDONED_CART", "de", {}).headline == "Didn't find what you wanted last time?"
    assert render_message("ABANDONED_CART", "fr-CA", {}).language == "fr"
    assert [resolve_language(code) for code in ("FR", "fr_BE", "", "en-GB", "es")] == ["fr", "fr", "en", "en", "en"]


def test_unknown_situation_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown situation"):
        render_message("BIRTHDAY", "en", {})


def test_the_shops_override_is_used_and_falls_back_line_by_line() -> None:
    overrides = {
        ("RETURN_VISIT", "fr"): MessageTemplate(
            headline="Re-bonjour {first_name} !",
            body="Encore plus de {category} pour vous.",
            fallback_body="Nos nouveautés vous attendent.",
        )
    }
    assert render_message("RETURN_VISIT", "fr", ALL_VALUES, overrides) == Message(
        "Re-bonjour Camille !", "Encore plus de sweaters pour vous.", "fr"
    )
    # No first name and no fallback headline in the override: the default's fallback headline.
    assert render_message("RETURN_VISIT", "fr", {}, overrides) == Message(
        "Bon retour parmi nous !", "Nos nouveautés vous attendent.", "fr"
    )
    # The override is per language.
    assert render_message("RETURN_VISIT", "en", ALL_VALUES, overrides).headline == "Welcome back, Camille!"


def test_values_are_inserted_verbatim_never_formatted_again() -> None:
    overrides = {("FIRST_VISIT", "en"): MessageTemplate("Hello {first_name}", "Look at {category}")}
    message = render_message("FIRST_VISIT", "en", {"first_name": "{category.__class__}", "category": "{0}"}, overrides)
    assert message == Message("Hello {category.__class__}", "Look at {0}", "en")


def test_an_invalid_stored_override_does_not_break_the_page() -> None:
    overrides = {("FIRST_VISIT", "en"): MessageTemplate("Hi {first_name.__class__}", "Hi {")}
    assert render_message("FIRST_VISIT", "en", ALL_VALUES, overrides) == Message(
        "Welcome!", "Trending right now in sweaters.", "en"
    )


def test_valid_templates_pass_validation() -> None:
    assert validate_template(MessageTemplate("Hi {first_name}", "More {category} with {{braces}}", "Hi!", "")) == []


@pytest.mark.parametrize(
    ("template", "field", "message_part"),
    [
        (MessageTemplate("Hi {first_name.upper}", "x"), "headline", "must be a plain name"),
        (MessageTemplate("Hi", "Best of {category[0]}"), "body", "must be a plain name"),
        (MessageTemplate("Hi {}", "x"), "headline", "must be a plain name"),
        (MessageTemplate("Hi {0}", "x"), "headline", "must be a plain name"),
        (MessageTemplate("Hi", "x", fallback_body="{categroy}"), "fallback_body", "unknown placeholder {categroy}"),
        (MessageTemplate("Hi {first_name!r}", "x"), "headline", "cannot have a format or conversion"),
        (MessageTemplate("Hi {first_name:>9999}", "x"), "headline", "cannot have a format or conversion"),
        (MessageTemplate("Hi {first_name", "x"), "headline", "malformed braces"),
        (MessageTemplate("Hi }", "x"), "headline", "malformed braces"),
        (MessageTemplate("  ", "x"), "headline", "must not be empty"),
        (MessageTemplate("x" * 121, "x"), "headline", "at most 120 characters"),
        (MessageTemplate("Hi", "x" * 401), "body", "at most 400 characters"),
    ],
)
def test_invalid_templates_are_rejected_with_the_field(
    template: MessageTemplate, field: str, message_part: str
) -> None:
    errors = validate_template(template)
    assert any(error_field == field and message_part in message for error_field, message in errors), errors
