"""Products and catalogs the decision unit tests build (one definition for all of them)."""

from __future__ import annotations

from services.decision.domain.catalog import Catalog, Product

SWEATERS = ("Women", "Knitwear", "Sweaters")
CARDIGANS = ("Women", "Knitwear", "Cardigans")
MEN_SWEATERS = ("Men", "Knitwear", "Sweaters")
SHOES = ("Men", "Shoes")


def product(
    product_id: str,
    path: tuple[str, ...] = SWEATERS,
    price: float = 50.0,
    stock: int = 3,
    added_ms: int = 0,
    brand: str = "Acme",
    consumable: bool = False,
) -> Product:
    return Product(product_id, f"Title {product_id}", path, brand, price, "EUR", stock, {}, added_ms, consumable)


def catalog_of(*products: Product) -> Catalog:
    catalog = Catalog()
    catalog.upsert(products)
    return catalog
