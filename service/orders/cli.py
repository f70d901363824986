"""`flask demo seed` (sample data) and `flask stock adjust` (audited stock changes)."""

import sys

import click
from flask.cli import AppGroup

from service.audit.actor import Actor
from service.cli_utils import echo_json
from service.extensions import db
from service.orders.exceptions import OrdersError
from service.orders.services import adjust_stock, find_product, seed_demo_data

demo_cli = AppGroup("demo", help="Demo data for a local run.")
stock_cli = AppGroup("stock", help="Product stock: audited manual adjustments.")


@demo_cli.command("seed")
@click.option("--customers", default=5, show_default=True, type=click.IntRange(1, 10000))
@click.option("--products", default=8, show_default=True, type=click.IntRange(1, 10000))
@click.option("--orders", default=20, show_default=True, type=click.IntRange(0, 1000000))
def seed(customers, products, orders):
    """Create sample customers, products and pending orders (only into an empty database)."""
    made = seed_demo_data(customers=customers, products=products, orders=orders)
    db.session.commit()
    if not any(made.values()):
        click.echo("demo data already present; nothing added")
    else:
        click.echo(f"seeded {made['customers']} customers, {made['products']} products, "
                   f"{made['orders']} pending orders")


# Negative deltas (`flask stock adjust SKU -5`) must not be read as options.
@stock_cli.command("adjust", context_settings={"ignore_unknown_options": True})
@click.argument("sku")
@click.argument("delta", type=int)
@click.option("--reason", required=True, help="Why, for the audit trail.")
@click.option("--idempotency-key", help="Makes a repeated command apply once.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def adjust(sku, delta, reason, idempotency_key, as_json):
    """Add DELTA units (negative to remove) to the product SKU (or id); stock never goes
    below zero. Audited with the operating-system user as actor.

    Exit 0 when applied (or replayed by its key), 1 when refused (unknown product,
    stock would go below zero, key used for another adjustment)."""
    try:
        product = find_product(sku)
        outcome = adjust_stock(product_id=product.id, delta=delta, reason=reason,
                               actor=Actor.cli(), idempotency_key=idempotency_key)
        db.session.commit()
    except OrdersError as exc:
        db.session.rollback()
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    result = outcome.adjustment
    if as_json:
        echo_json({**result, "sku": product.sku, "created": outcome.created})
    else:
        verb = "adjusted" if outcome.created else "already applied (same key)"
        click.echo(f"{product.sku}: {verb}: {result['stock_before']} -> {result['stock_after']}")
