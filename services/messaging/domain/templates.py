"""What a triggered message says: the e-mail (subject, HTML and plain text) and the push payload
of each trigger kind, in English or French, with the recommended products.

The layout lives in `services/messaging/templates/` (Jinja2, HTML autoescaped, undefined names
are errors); the words live here, one `EmailCopy` per kind and language, as decision's messages
do. Every product and call-to-action link goes through `track_link` before a template sees it,
so no template can forget to track a link. The unsubscribe link is not tracked: it is a signed
token URL of its own.
"""

from __future__ import annotations

import functools
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import jinja2

from services.messaging.domain.mime import QuotedPrintable, quoted_printable_piece
from services.messaging.domain.triggers import TriggerKind
from services.profile.domain.events import CATEGORY_SEPARATOR

TEMPLATES_DIR: Final = Path(__file__).resolve().parent.parent / "templates"
DEFAULT_LANGUAGE: Final = "en"
SUPPORTED_LANGUAGES: Final = ("en", "fr")

TrackLink = Callable[[int, str], str]  # (link index, target URL) -> tracked URL


def resolve_language(language: str) -> str:
    """ "fr", "FR" or "fr-CA" → "fr"; empty or unsupported → English."""
    primary = language.strip().lower().replace("_", "-").split("-", 1)[0]
    return primary if primary in SUPPORTED_LANGUAGES else DEFAULT_LANGUAGE


def category_label(category_path: str) -> str:
    """ "Women > Knitwear > Cashmere sweaters" → "Cashmere sweaters"."""
    return category_path.rsplit(CATEGORY_SEPARATOR, 1)[-1].strip()


# ---------------------------------------------------------------------------------------- money
# Currencies without minor units in everyday prices (ISO 4217 exponent 0).
_ZERO_DECIMAL_CURRENCIES: Final = frozenset({"JPY", "KRW", "CLP", "ISK", "HUF", "VND"})
_SYMBOLS: Final[Mapping[str, Mapping[str, str]]] = MappingProxyType(
    {
        "en": {"EUR": "€", "USD": "$", "GBP": "£", "JPY": "¥", "CAD": "CA$", "AUD": "A$", "CNY": "CN¥", "INR": "₹"},
        "fr": {"EUR": "€", "USD": "$US", "GBP": "£GB", "JPY": "JPY", "CAD": "$CA", "AUD": "$AU", "CNY": "CNY"},
    }
)
_NARROW_NO_BREAK_SPACE: Final = "\u202f"  # French digit grouping, as CLDR has it
_NO_BREAK_SPACE: Final = "\u00a0"  # between a French amount and its currency: never split


@functools.lru_cache(maxsize=4096, typed=True)  # a catalog's prices recur in every email
def format_price(amount: float | Decimal, currency: str, language: str) -> str:
    """English "€1,249.90" / "CHF 49.90"; French "1 249,90 €" / "49,90 CHF" (no-break spaces)."""
    if not Decimal(repr(amount) if isinstance(amount, float) else amount).is_finite():
        raise ValueError("a price must be a finite amount")
    code = currency.strip().upper()
    places = Decimal(1) if code in _ZERO_DECIMAL_CURRENCIES else Decimal("0.01")
    # repr of a float is its shortest exact spelling: 49.9 stays 49.9, not 49.899999...
    value = (amount if isinstance(amount, Decimal) else Decimal(repr(amount))).quantize(places, ROUND_HALF_UP)
    sign = "-" if value < 0 else ""
    digits = f"{abs(value):,f}"  # "1,249.90"
    lang = resolve_language(language)
    symbol = _SYMBOLS[lang].get(code, code)
    if lang == "fr":
        french = digits.replace(",", _NARROW_NO_BREAK_SPACE).replace(".", ",")
        return f"{sign}{french}{_NO_BREAK_SPACE}{symbol}" if symbol else f"{sign}{french}"
    if not symbol:
        return f"{sign}{digits}"
    separator = " " if symbol.isalpha() else ""  # "CHF 49.90" but "€49.90"
    return f"{sign}{symbol}{separator}{digits}"


# ----------------------------------------------------------------------------------------- copy
@dataclass(frozen=True, slots=True)
class EmailCopy:
    """The words of one e-mail. `{shop}` and `{category}` are filled in (category: NEW_ARRIVALS)."""

    subject: str
    preheader: str
    heading: str
    intro: str
    products_heading: str
    cta: str


@dataclass(frozen=True, slots=True)
class PushCopy:
    title: str
    body: str


@dataclass(frozen=True, slots=True)
class FooterCopy:
    reason: str
    unsubscribe: str


_EMAIL_COPY: Final[Mapping[tuple[TriggerKind, str], EmailCopy]] = MappingProxyType(
    {
        (TriggerKind.ABANDONED_CART, "en"): EmailCopy(
            subject="You left something in your cart",
            preheader="Your cart at {shop} is saved for you.",
            heading="Still thinking it over?",
            intro="Your cart at {shop} is saved. Complete your order whenever you're ready.",
            products_heading="In your cart",
            cta="Return to my cart",
        ),
        (TriggerKind.ABANDONED_CART, "fr"): EmailCopy(
            subject="Vous avez oublié quelque chose dans votre panier",
            preheader="Votre panier chez {shop} vous attend.",
            heading="Vous hésitez encore ?",
            intro="Votre panier chez {shop} est sauvegardé. Finalisez votre commande quand vous le souhaitez.",
            products_heading="Dans votre panier",
            cta="Retrouver mon panier",
        ),
        (TriggerKind.BROWSE_ABANDONMENT, "en"): EmailCopy(
            subject="Still interested?",
            preheader="The item you looked at is still available.",
            heading="Caught your eye?",
            intro="Here is the item you looked at, with a few similar picks.",
            products_heading="You viewed",
            cta="Take another look",
        ),
        (TriggerKind.BROWSE_ABANDONMENT, "fr"): EmailCopy(
            subject="Toujours intéressé(e) ?",
            preheader="L'article que vous avez regardé est toujours disponible.",
            heading="Un coup de cœur ?",
            intro="Voici l'article que vous avez regardé, avec quelques idées dans le même esprit.",
            products_heading="Vous avez regardé",
            cta="Le revoir",
        ),
        (TriggerKind.POST_PURCHASE, "en"): EmailCopy(
            subject="Thank you for your order",
            preheader="A few ideas to go with your purchase.",
            heading="Thanks for shopping at {shop}",
            intro="We hope you love your purchase. These go well with it.",
            products_heading="Goes well with your order",
            cta="Discover more",
        ),
        (TriggerKind.POST_PURCHASE, "fr"): EmailCopy(
            subject="Merci pour votre commande",
            preheader="Quelques idées pour accompagner votre achat.",
            heading="Merci pour votre achat chez {shop}",
            intro="Nous espérons que votre achat vous plaît. Ces articles l'accompagnent à merveille.",
            products_heading="Pour aller avec votre commande",
            cta="Découvrir",
        ),
        (TriggerKind.WELCOME, "en"): EmailCopy(
            subject="Welcome to {shop}",
            preheader="A selection to get you started.",
            heading="Welcome!",
            intro="Thanks for joining {shop}. Here is a selection to get you started.",
            products_heading="Popular right now",
            cta="Start shopping",
        ),
        (TriggerKind.WELCOME, "fr"): EmailCopy(
            subject="Bienvenue chez {shop}",
            preheader="Une sélection pour bien commencer.",
            heading="Bienvenue !",
            intro="Merci d'avoir rejoint {shop}. Voici une sélection pour bien commencer.",
            products_heading="Populaires en ce moment",
            cta="Commencer mes achats",
        ),
        (TriggerKind.WIN_BACK, "en"): EmailCopy(
            subject="We miss you",
            preheader="See what's new at {shop}.",
            heading="It's been a while",
            intro="A lot has changed since your last visit. Here is what's new for you.",
            products_heading="Picked for you",
            cta="See what's new",
        ),
        (TriggerKind.WIN_BACK, "fr"): EmailCopy(
            subject="Vous nous manquez",
            preheader="Découvrez les nouveautés de {shop}.",
            heading="Cela fait longtemps",
            intro="Beaucoup de nouveautés depuis votre dernière visite. Voici notre sélection pour vous.",
            products_heading="Sélectionnés pour vous",
            cta="Voir les nouveautés",
        ),
        (TriggerKind.NEW_ARRIVALS, "en"): EmailCopy(
            subject="New in {category}",
            preheader="Fresh picks in a category you love.",
            heading="Just arrived in {category}",
            intro="Fresh picks in a category you love.",
            products_heading="New arrivals",
            cta="Shop new arrivals",
        ),
        (TriggerKind.NEW_ARRIVALS, "fr"): EmailCopy(
            subject="Nouveautés : {category}",
            preheader="De nouveaux articles dans une catégorie que vous aimez.",
            heading="Tout juste arrivés : {category}",
            intro="De nouveaux articles dans une catégorie que vous aimez.",
            products_heading="Nouveautés",
            cta="Voir les nouveautés",
        ),
    }
)

_FOOTER_COPY: Final[Mapping[str, FooterCopy]] = MappingProxyType(
    {
        "en": FooterCopy("You receive this e-mail because you subscribed to {shop}'s e-mails.", "Unsubscribe"),
        "fr": FooterCopy("Vous recevez cet e-mail car vous êtes inscrit(e) aux e-mails de {shop}.", "Se désinscrire"),
    }
)

_PUSH_COPY: Final[Mapping[tuple[TriggerKind, str], PushCopy]] = MappingProxyType(
    {
        (TriggerKind.ABANDONED_CART, "en"): PushCopy("Your cart is waiting", "Complete your order at {shop}."),
        (TriggerKind.ABANDONED_CART, "fr"): PushCopy(
            "Votre panier vous attend", "Finalisez votre commande chez {shop}."
        ),
        (TriggerKind.BROWSE_ABANDONMENT, "en"): PushCopy(
            "Still interested?", "Take another look at what caught your eye."
        ),
        (TriggerKind.BROWSE_ABANDONMENT, "fr"): PushCopy("Toujours intéressé(e) ?", "Revenez voir ce qui vous a plu."),
        (TriggerKind.POST_PURCHASE, "en"): PushCopy("Thanks for your order", "Discover what goes well with it."),
        (TriggerKind.POST_PURCHASE, "fr"): PushCopy("Merci pour votre commande", "Découvrez ce qui l'accompagne."),
        (TriggerKind.WELCOME, "en"): PushCopy("Welcome to {shop}", "Discover our selection for you."),
        (TriggerKind.WELCOME, "fr"): PushCopy("Bienvenue chez {shop}", "Découvrez notre sélection pour vous."),
        (TriggerKind.WIN_BACK, "en"): PushCopy("We miss you", "See what's new since your last visit."),
        (TriggerKind.WIN_BACK, "fr"): PushCopy(
            "Vous nous manquez", "Découvrez les nouveautés depuis votre dernière visite."
        ),
        (TriggerKind.NEW_ARRIVALS, "en"): PushCopy("New in {category}", "Fresh picks in a category you love."),
        (TriggerKind.NEW_ARRIVALS, "fr"): PushCopy(
            "Nouveautés : {category}", "De nouveaux articles dans une catégorie que vous aimez."
        ),
    }
)


_COLONS: Final = MappingProxyType({"en": ":", "fr": "\u00a0:"})  # French puts a no-break space before ":"


def email_copy(kind: TriggerKind, language: str) -> EmailCopy:
    return _EMAIL_COPY[kind, resolve_language(language)]


def push_copy(kind: TriggerKind, language: str) -> PushCopy:
    return _PUSH_COPY[kind, resolve_language(language)]


def _fill(text: str, shop: str, category: str) -> str:
    # The copy is ours and only names {shop} and {category}; the values are inserted verbatim.
    return text.format(shop=shop, category=category)


def _category_for(kind: TriggerKind, category: str) -> str:
    if kind is TriggerKind.NEW_ARRIVALS and not category.strip():
        raise ValueError("a NEW_ARRIVALS message needs the category of its products")
    return category_label(category)


# -------------------------------------------------------------------------------------- e-mails
@dataclass(frozen=True, slots=True)
class RecommendedProduct:
    product_id: str
    title: str
    price: float | Decimal
    currency: str
    url: str
    image_url: str = ""


@dataclass(frozen=True, slots=True)
class Shop:
    name: str
    url: str


@dataclass(frozen=True, slots=True)
class EmailContent:
    """What one e-mail shows. `cta_url` is the main button (the cart for ABANDONED_CART, the shop
    otherwise); `category` is a category path, needed by NEW_ARRIVALS."""

    kind: TriggerKind
    language: str
    shop: Shop
    products: tuple[RecommendedProduct, ...]
    cta_url: str
    unsubscribe_url: str
    open_pixel_url: str
    category: str = ""


@dataclass(frozen=True, slots=True)
class RenderedEmail:
    subject: str
    html: str
    text: str
    language: str  # the language actually used, after falling back to English
    link_targets: tuple[str, ...]  # the untracked URL of each link index
    # The bodies encoded for MIME, when the renderer had most of the encoding already (EmailRenderer).
    html_encoded: QuotedPrintable | None = field(default=None, compare=False)
    text_encoded: QuotedPrintable | None = field(default=None, compare=False)


CTA_LINK_INDEX: Final = 0  # products follow from 1, in the order shown, then the shop's home page


def create_environment(templates_dir: Path = TEMPLATES_DIR) -> jinja2.Environment:
    """Autoescape for *.html, never for *.txt; a name missing from the context is an error, not
    an empty string in a customer's inbox. The templates ship with the code and are compiled once:
    no reload check (a stat of each file on every email, a few per cent of a send's CPU)."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir),
        auto_reload=False,
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default_for_string=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render_email(environment: jinja2.Environment, content: EmailContent, track_link: TrackLink) -> RenderedEmail:
    """The email rendered by Jinja from start to end: the reference `EmailRenderer` must match."""
    language = resolve_language(content.language)
    category = _category_for(content.kind, content.category)
    targets = _link_targets(content)
    values = _personal_values(content, language, [track_link(index, target) for index, target in enumerate(targets)])
    context = _email_context(content, language, category, values)
    return RenderedEmail(
        subject=context["subject"],
        html=environment.get_template("email.html").render(context),
        text=environment.get_template("email.txt").render(context),
        language=language,
        link_targets=targets,
    )


def _link_targets(content: EmailContent) -> tuple[str, ...]:
    return (content.cta_url, *(product.url for product in content.products), content.shop.url)


def _personal_values(content: EmailContent, language: str, links: list[str]) -> list[str]:
    """What differs from one recipient to the next, in a fixed order: the tracked links (as
    `_link_targets` orders them), each product's title, price and image, the unsubscribe link and
    the open pixel."""
    values = list(links)
    for product in content.products:
        values += [product.title, format_price(product.price, product.currency, language), product.image_url]
    values += [content.unsubscribe_url, content.open_pixel_url]
    return values


def _email_context(content: EmailContent, language: str, category: str, values: Sequence[str]) -> dict[str, Any]:
    """The templates' variables: the copy of (kind, language), the shop's name and `values`
    (`_personal_values`) in their places."""
    shop = content.shop.name
    copy = email_copy(content.kind, language)
    footer = _FOOTER_COPY[language]
    product_count = len(content.products)
    links = values[: product_count + 2]
    return {
        "language": language,
        "colon": _COLONS[language],
        "shop_name": shop,
        "shop_link": links[-1],
        "subject": _fill(copy.subject, shop, category),
        "preheader": _fill(copy.preheader, shop, category),
        "heading": _fill(copy.heading, shop, category),
        "intro": _fill(copy.intro, shop, category),
        "products_heading": copy.products_heading,
        "cta": copy.cta,
        "cta_link": links[CTA_LINK_INDEX],
        "products": [
            {"title": title, "price": price, "image_url": image_url, "link": link}
            for link, (title, price, image_url) in zip(
                links[1:-1], _triples(values[product_count + 2 : product_count + 2 + 3 * product_count]), strict=True
            )
        ],
        "footer": _fill(footer.reason, shop, category),
        "unsubscribe": footer.unsubscribe,
        "unsubscribe_url": values[-2],
        "open_pixel_url": values[-1],
    }


def _triples(values: Sequence[str]) -> list[tuple[str, str, str]]:
    return [(values[i], values[i + 1], values[i + 2]) for i in range(0, len(values), 3)]


@dataclass(frozen=True, slots=True)
class _Layout:
    """An email rendered once with a placeholder in the place of every personal value: the
    fixed text between them (`html_text[0]`, then one after each slot) and the slot (index in
    `_personal_values`) that goes before each later piece."""

    subject: str
    html_text: tuple[str, ...]
    html_slots: tuple[int, ...]
    text_text: tuple[str, ...]
    text_slots: tuple[int, ...]
    # The same fixed pieces, each encoded as a piece of a quoted-printable body.
    html_encoded: tuple[str, ...]
    text_encoded: tuple[str, ...]


class EmailRenderer:
    """Renders emails as `render_email` does, for a fraction of its CPU.

    Jinja spent about a quarter of the messaging process's CPU per email, most of it escaping
    and joining text that is the same for every recipient of a (kind, language): the copy, the
    shop's name and the layout. So each template is rendered once per layout key, with a
    placeholder (NUL, a nonce and a number: text no copy or shop name contains) in the place of
    every personal value (tracked links, product titles, prices and images, the unsubscribe link
    and the pixel), and cut at the placeholders. An email is then the fixed pieces joined with its
    values, escaped as Jinja escapes them (`markupsafe.escape`) in the HTML, as they are in the
    text. The key holds whatever the templates can branch on: kind, language, shop, category,
    and which values are empty (`{% if products %}`, `{% if product.image_url %}`).

    A layout whose placeholders do not all come back intact (a template that filters a personal
    value, say) is not used: such a key is rendered by Jinja every time, which is slower, never
    wrong. tests/unit/messaging/test_templates.py checks both give the same bytes.
    """

    def __init__(self, environment: jinja2.Environment, max_layouts: int = 512) -> None:
        self._environment = environment
        self._max_layouts = max_layouts
        self._layouts: dict[tuple[object, ...], _Layout | None] = {}
        self._marker = f"\x00{secrets.token_hex(6)}:"
        self._placeholder = re.compile(re.escape(self._marker) + r"(\d+)\x00")
        self.layouts_rendered = 0  # how many times Jinja rendered a layout (tests, metrics)
        # Compiled now, at start-up, rather than by the first sends.
        for name in ("email.html", "email.txt"):
            environment.get_template(name)

    def render(self, content: EmailContent, track_link: TrackLink) -> RenderedEmail:
        language = resolve_language(content.language)
        category = _category_for(content.kind, content.category)
        targets = _link_targets(content)
        links = [track_link(index, target) for index, target in enumerate(targets)]
        values = _personal_values(content, language, links)
        key = (content.kind, language, content.shop, category, tuple(map(bool, values)))
        if key in self._layouts:
            layout = self._layouts[key]
        else:
            layout = self._layout(content, language, category, values)
            if len(self._layouts) >= self._max_layouts:  # the oldest goes; layouts are cheap to make again
                del self._layouts[next(iter(self._layouts))]
            self._layouts[key] = layout
        if layout is None:
            return render_email(self._environment, content, track_link=lambda index, _target: values[index])
        escaped = [_escape_html(value) for value in values]
        encoded = [quoted_printable_piece(value) for value in values]
        # Escaping changes few values (a URL seldom has "&"): those keep their encoding.
        escaped_encoded = [
            code if html is text else quoted_printable_piece(html)
            for html, text, code in zip(escaped, values, encoded, strict=True)
        ]
        return RenderedEmail(
            subject=layout.subject,
            html=_join(layout.html_text, layout.html_slots, escaped),
            text=_join(layout.text_text, layout.text_slots, values),
            language=language,
            link_targets=targets,
            html_encoded=QuotedPrintable(_join(layout.html_encoded, layout.html_slots, escaped_encoded)),
            text_encoded=QuotedPrintable(_join(layout.text_encoded, layout.text_slots, encoded)),
        )

    def _layout(self, content: EmailContent, language: str, category: str, values: list[str]) -> _Layout | None:
        placeholders = [f"{self._marker}{slot}\x00" if value else "" for slot, value in enumerate(values)]
        context = _email_context(content, language, category, placeholders)
        self.layouts_rendered += 1
        html = self._placeholder.split(self._environment.get_template("email.html").render(context))
        text = self._placeholder.split(self._environment.get_template("email.txt").render(context))
        html_slots = tuple(int(slot) for slot in html[1::2])
        text_slots = tuple(int(slot) for slot in text[1::2])
        expected = {slot for slot, value in enumerate(values) if value}
        # Every placeholder found, and no trace of a mangled one (NUL is in none of our texts).
        if set(html_slots) | set(text_slots) != expected or "\x00" in "".join(html[::2] + text[::2]):
            return None
        return _Layout(
            context["subject"],
            tuple(html[::2]),
            html_slots,
            tuple(text[::2]),
            text_slots,
            tuple(map(quoted_printable_piece, html[::2])),
            tuple(map(quoted_printable_piece, text[::2])),
        )


def _escape_html(value: str) -> str:
    """`markupsafe.escape(value)` as text (what Jinja's autoescape writes for a str), without a
    `Markup` object per value: about a fifth of its cost, on twenty values per email."""
    return (
        value.replace("&", "&amp;")
        .replace(">", "&gt;")
        .replace("<", "&lt;")
        .replace("'", "&#39;")
        .replace('"', "&#34;")
    )


def _join(pieces: tuple[str, ...], slots: tuple[int, ...], values: Sequence[str]) -> str:
    parts = [pieces[0]]
    for slot, piece in zip(slots, pieces[1:], strict=True):
        parts += (values[slot], piece)
    return "".join(parts)


# ----------------------------------------------------------------------------------------- push
def push_message(
    kind: TriggerKind,
    language: str,
    device_token: str,
    shop: Shop,
    link: str,
    data: Mapping[str, str] | None = None,
    category: str = "",
) -> dict[str, Any]:
    """The body of an FCM HTTP v1 `messages:send` request. `link` (already tracked) opens when
    the notification is clicked; FCM requires it to be HTTPS. `data` values must be strings."""
    if not link.startswith("https://"):
        raise ValueError("FCM web push links must be https URLs")
    copy = push_copy(kind, language)
    label = _category_for(kind, category)
    payload_data = {"trigger": kind.name, **(data or {})}
    return {
        "message": {
            "token": device_token,
            "notification": {"title": _fill(copy.title, shop.name, label), "body": _fill(copy.body, shop.name, label)},
            "data": payload_data,
            "webpush": {"fcm_options": {"link": link}},
        }
    }
