"""`flask demo seed`: sample data for a fresh embedded run."""

import click
from flask.cli import AppGroup

from service.extensions import db
from service.orders.services import seed_demo_data

demo_cli = AppGroup("demo", help="Demo data for a local run.")


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
