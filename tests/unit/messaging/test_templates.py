"""E-mails and push payloads per trigger kind in English and French: words, prices per locale,
escaping, tracked links, unsubscribe link, open pixel, and the FCM v1 shape."""

from __future__ import annotations

import quopri
from decimal import Decimal

import jinja2
import markupsafe
import pytest

from services.messaging.domain.templates import (
    EmailContent,
    EmailRenderer,
    RecommendedProduct,
    RenderedEmail,
    Shop,
    category_label,
    create_environment,
    email_copy,
    format_price,
    push_message,
    render_email,
    resolve_language,
)
from services.messaging.domain.triggers import TriggerKind

SHOP = Shop("Maison Lune", "https://shop.example")
PRODUCTS = (
    RecommendedProduct("p1", "Merino sweater", 1249.9, "EUR", "https://shop.example/p1", "https://img.example/p1.jpg"),
    RecommendedProduct("p2", "Wool scarf", 49.9, "EUR", "https://shop.example/p2"),
)
ENVIRONMENT = create_environment()


def tracked(index: int, url: str) -> str:
    return f"https://t.example/c/{index}"


def content(kind: TriggerKind = TriggerKind.ABANDONED_CART, language: str = "en", **changes: object) -> EmailContent:
    values: dict[str, object] = {
        "kind": kind,
        "language": language,
        "shop": SHOP,
        "products": PRODUCTS,
        "cta_url": "https://shop.example/cart",
        "unsubscribe_url": "https://m.example/u/TOKEN",
        "open_pixel_url": "https://m.example/o/TOKEN.gif",
        "category": "Women > Knitwear" if kind is TriggerKind.NEW_ARRIVALS else "",
    }
    values.update(changes)
    return EmailContent(**values)  # type: ignore[arg-type]


def render(kind: TriggerKind = TriggerKind.ABANDONED_CART, language: str = "en", **changes: object) -> RenderedEmail:
    return render_email(ENVIRONMENT, content(kind, language, **changes), tracked)


# ---------------------------------------------------------------------------------- languages
@pytest.mark.parametrize(
    ("language", "resolved"), [("fr", "fr"), ("FR-ca", "fr"), ("fr_BE", "fr"), ("de", "en"), ("", "en")]
)
def test_language_resolution_falls_back_to_english(language: str, resolved: str) -> None:
    assert resolve_language(language) == resolved


@pytest.mark.parametrize("kind", list(TriggerKind))
@pytest.mark.parametrize("language", ["en", "fr"])
def test_every_kind_renders_in_both_languages_with_distinct_words(kind: TriggerKind, language: str) -> None:
    email = render(kind, language)
    copy = email_copy(kind, language)
    assert email.language == language
    assert email.subject and "{" not in email.subject
    assert f'<html lang="{language}">' in email.html
    assert str(markupsafe.escape(copy.cta)) in email.html and copy.cta in email.text
    assert "{" not in email.text and "{{" not in email.html
    other = email_copy(kind, "fr" if language == "en" else "en")
    assert copy.subject != other.subject


def test_subjects_fill_the_shop_and_the_category() -> None:
    assert render(TriggerKind.WELCOME, "en").subject == "Welcome to Maison Lune"
    assert render(TriggerKind.WELCOME, "fr").subject == "Bienvenue chez Maison Lune"
    assert render(TriggerKind.NEW_ARRIVALS, "en").subject == "New in Knitwear"
    assert render(TriggerKind.NEW_ARRIVALS, "fr").subject == "Nouveautés : Knitwear"


def test_an_unsupported_language_gets_the_english_email() -> None:
    german = render(TriggerKind.WIN_BACK, "de-DE")
    assert (german.language, german.subject) == ("en", "We miss you")


def test_new_arrivals_without_a_category_are_refused() -> None:
    with pytest.raises(ValueError, match="category"):
        render(TriggerKind.NEW_ARRIVALS, "en", category="")


def test_category_label_is_the_last_level_of_the_path() -> None:
    assert category_label("Women > Knitwear > Cashmere sweaters") == "Cashmere sweaters"
    assert category_label("Shoes") == "Shoes"


# ------------------------------------------------------------------------------------- prices
@pytest.mark.parametrize(
    ("amount", "currency", "language", "expected"),
    [
        (49.9, "EUR", "en", "€49.90"),
        (49.9, "EUR", "fr", "49,90\u00a0€"),
        (1249.9, "EUR", "fr", "1\u202f249,90\u00a0€"),
        (1249.9, "USD", "en", "$1,249.90"),
        (1249.9, "USD", "fr", "1\u202f249,90\u00a0$US"),
        (19.99, "GBP", "en", "£19.99"),
        (4990, "JPY", "en", "¥4,990"),
        (49.9, "CHF", "en", "CHF 49.90"),
        (49.9, "CHF", "fr", "49,90\u00a0CHF"),
        (0.125, "EUR", "en", "€0.13"),  # half up, from the decimal spelling
        (Decimal("10"), "eur", "en", "€10.00"),
        (-5.5, "EUR", "en", "-€5.50"),
    ],
)
def test_prices_are_formatted_per_locale(amount: float | Decimal, currency: str, language: str, expected: str) -> None:
    assert format_price(amount, currency, language) == expected


def test_a_price_that_is_not_a_number_is_refused() -> None:
    with pytest.raises(ValueError, match="finite"):
        format_price(float("nan"), "EUR", "en")


def test_prices_in_the_email_use_the_emails_language() -> None:
    assert "1\u202f249,90\u00a0€" in render(language="fr").html
    assert "€1,249.90" in render(language="en").text


# -------------------------------------------------------------------------------------- links
def test_every_product_and_cta_link_is_tracked_in_order() -> None:
    seen: list[tuple[int, str]] = []

    def track(index: int, url: str) -> str:
        seen.append((index, url))
        return f"https://t.example/c/{index}"

    email = render_email(ENVIRONMENT, content(), track)
    assert seen == [
        (0, "https://shop.example/cart"),
        (1, "https://shop.example/p1"),
        (2, "https://shop.example/p2"),
        (3, "https://shop.example"),  # the shop's name in the header
    ]
    assert email.link_targets == tuple(url for _, url in seen)
    for index in range(4):
        assert f'href="https://t.example/c/{index}"' in email.html
    for index in range(3):
        assert f"https://t.example/c/{index}" in email.text
    assert "https://shop.example" not in email.html and "https://shop.example" not in email.text


def test_the_unsubscribe_link_and_the_open_pixel_are_there_and_untracked() -> None:
    email = render()
    assert 'href="https://m.example/u/TOKEN"' in email.html
    assert "https://m.example/u/TOKEN" in email.text
    assert '<img src="https://m.example/o/TOKEN.gif" width="1" height="1" alt=""' in email.html
    assert "TOKEN.gif" not in email.text


def test_a_product_image_is_shown_only_when_there_is_one() -> None:
    email = render()
    assert email.html.count("<img ") == 2  # p1's image and the pixel
    assert 'src="https://img.example/p1.jpg"' in email.html


def test_an_email_without_products_has_no_product_section() -> None:
    email = render(products=())
    assert "In your cart" not in email.html and "In your cart" not in email.text
    assert 'href="https://t.example/c/0"' in email.html


# ---------------------------------------------------------------------------------- escaping
def test_html_is_escaped_in_the_html_body_but_not_in_the_text_body() -> None:
    hostile = RecommendedProduct("p3", '<script>alert("x")</script>', 10, "EUR", "https://shop.example/p3")
    email = render(products=(hostile,), shop=Shop("A & B <Shop>", "https://shop.example"))
    assert "<script>" not in email.html
    assert "&lt;script&gt;" in email.html
    assert "A &amp; B &lt;Shop&gt;" in email.html
    assert '<script>alert("x")</script>' in email.text
    assert "A & B <Shop>" in email.text


def test_french_puts_a_no_break_space_before_colons_in_the_text_body() -> None:
    assert "Retrouver mon panier\u00a0: https://t.example/c/0" in render(language="fr").text
    assert "Return to my cart: https://t.example/c/0" in render(language="en").text


def test_a_missing_variable_is_an_error_not_an_empty_string() -> None:
    with pytest.raises(jinja2.UndefinedError):
        ENVIRONMENT.get_template("email.txt").render({"heading": "Hi"})


# ------------------------------------------------------------------- rendering from layouts
HOSTILE = RecommendedProduct(
    "p3", '<b>"Tom & Jerry\'s"</b>', 10, "USD", "https://shop.example/p3", "https://i.example/?a=1&b=2"
)


@pytest.mark.parametrize("kind", list(TriggerKind))
@pytest.mark.parametrize("language", ["en", "fr", "de"])
@pytest.mark.parametrize(
    "products", [PRODUCTS, (), (HOSTILE,), (PRODUCTS[1], HOSTILE, PRODUCTS[0])], ids=["two", "none", "hostile", "three"]
)
def test_the_renderer_gives_the_bytes_jinja_gives(
    kind: TriggerKind, language: str, products: tuple[RecommendedProduct, ...]
) -> None:
    renderer = EmailRenderer(ENVIRONMENT)
    shop = Shop("A & B <Lune>", "https://shop.example")
    for person in ("first", "second"):  # the second is filled in from the first one's layout
        email = content(
            kind, language, products=products, shop=shop, unsubscribe_url=f"https://m.example/u/{person}?x=1&y=2"
        )

        def track(index: int, url: str, person: str = person) -> str:
            return f"https://t.example/c/{person}/{index}?to={url}&n=1"

        rendered = renderer.render(email, track)
        assert rendered == render_email(ENVIRONMENT, email, track)
        # The bodies encoded for MIME from the layout's encoded pieces decode to the same text.
        assert rendered.html_encoded is not None and rendered.text_encoded is not None
        for encoded, decoded in ((rendered.html_encoded, rendered.html), (rendered.text_encoded, rendered.text)):
            assert all(len(line) <= 76 for line in encoded.encoded.split("\r\n"))
            assert quopri.decodestring(encoded.encoded.encode()).replace(b"\r\n", b"\n") == decoded.encode()
    assert renderer.layouts_rendered == 1


def test_the_renderer_renders_a_layout_once_per_kind_language_and_shape() -> None:
    renderer = EmailRenderer(ENVIRONMENT)
    for _ in range(3):
        renderer.render(content(TriggerKind.WELCOME, "en"), tracked)
        renderer.render(content(TriggerKind.WELCOME, "fr"), tracked)
        renderer.render(content(TriggerKind.WELCOME, "en", products=PRODUCTS[1:]), tracked)
    assert renderer.layouts_rendered == 3


def test_the_renderer_keeps_a_bounded_number_of_layouts() -> None:
    renderer = EmailRenderer(ENVIRONMENT, max_layouts=2)
    for category in ("Shoes", "Bags", "Hats", "Shoes"):
        email = renderer.render(content(TriggerKind.NEW_ARRIVALS, category=category), tracked)
        assert email.subject == f"New in {category}"
    assert renderer.layouts_rendered == 4  # Shoes was pushed out by Hats


def test_a_template_that_transforms_a_personal_value_is_rendered_by_jinja_every_time() -> None:
    environment = create_environment()
    source = environment.loader.get_source(environment, "email.html")[0]  # type: ignore[union-attr]
    loader = jinja2.DictLoader(
        {
            "email.html": source.replace("{{ product.title }}", "{{ product.title|upper }}"),
            "email.txt": environment.loader.get_source(environment, "email.txt")[0],  # type: ignore[union-attr]
        }
    )
    environment.loader = loader
    renderer = EmailRenderer(environment)
    email = renderer.render(content(), tracked)
    assert email == render_email(environment, content(), tracked)
    assert "MERINO SWEATER" in email.html


# --------------------------------------------------------------------------------------- push
def test_the_push_payload_has_the_fcm_v1_shape() -> None:
    payload = push_message(
        TriggerKind.ABANDONED_CART, "fr", "device-token", SHOP, "https://t.example/c/0", {"delivery_id": "d1"}
    )
    assert payload == {
        "message": {
            "token": "device-token",
            "notification": {"title": "Votre panier vous attend", "body": "Finalisez votre commande chez Maison Lune."},
            "data": {"trigger": "ABANDONED_CART", "delivery_id": "d1"},
            "webpush": {"fcm_options": {"link": "https://t.example/c/0"}},
        }
    }


@pytest.mark.parametrize("kind", list(TriggerKind))
def test_push_texts_exist_for_every_kind_in_both_languages(kind: TriggerKind) -> None:
    category = "Women > Knitwear"
    english = push_message(kind, "en", "tok", SHOP, "https://t.example/", category=category)["message"]
    french = push_message(kind, "fr-FR", "tok", SHOP, "https://t.example/", category=category)["message"]
    assert english["notification"]["title"] != french["notification"]["title"]
    for notification in (english["notification"], french["notification"]):
        assert notification["title"] and notification["body"]
        assert "{" not in notification["title"] + notification["body"]


def test_push_needs_an_https_link() -> None:
    with pytest.raises(ValueError, match="https"):
        push_message(TriggerKind.WELCOME, "en", "tok", SHOP, "http://t.example/")
