"""Profile the hot paths in one process: the intake request and `webhooks.process_event`.

    python -m loadtests.profile [--events 2000] [--pyinstrument intake|worker]

Uses a fresh PostgreSQL database and a private Redis database (as the benchmark does),
sends signed Stripe deliveries through the WSGI app (no HTTP server: what is measured is
the service's own cost), then runs each stored event's task in this process. Prints the
mean cost of each in milliseconds; with --pyinstrument, the profile of one of them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from loadtests import signing
from loadtests.stack import Stack, say

# The first secret the service accepts (the stack passes this environment on to it).
SECRET = os.environ.get("STRIPE_WEBHOOK_SECRET", "whsec_racine_dev_secret").split(",")[0].strip()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--orders", type=int, default=2000)
    parser.add_argument("--pyinstrument", choices=("intake", "worker"))
    args = parser.parse_args(argv)
    stack = Stack(with_workers=False, with_beat=False)
    try:
        stack._prepare()
        stack.flask("demo", "seed", "--customers", "50", "--products", "20",
                    "--orders", str(args.orders))
        os.environ.update(stack.env)
        from service import create_app

        app = create_app()
        with app.app_context():
            from sqlalchemy import text

            from service.extensions import db

            # Each payment pays its order exactly: the common path (paid, follow-ups queued).
            totals = dict(db.session.execute(text("SELECT id, total_cents FROM orders")).all())
            db.session.remove()
        deliveries = []
        for n in range(args.events):
            order_id = 1 + n % args.orders
            _, body, headers, _ = signing.stripe_payment(order_id, totals[order_id], secret=SECRET)
            deliveries.append((body, headers))
        client = app.test_client()
        client.post("/webhooks/stripe", data=deliveries[0][0], headers=deliveries[0][1])

        def intake():
            for body, headers in deliveries[1:]:
                response = client.post("/webhooks/stripe", data=body, headers=headers)
                if response.status_code != 200:
                    raise SystemExit(f"profile: intake answered {response.status_code}")

        task = app.extensions["celery"].tasks["webhooks.process_event"]

        def worker():
            with app.app_context():
                from sqlalchemy import text

                from service.extensions import db

                pks = db.session.execute(text(
                    "SELECT id FROM webhook_events WHERE status <> 'processed' ORDER BY id"
                )).scalars().all()
                db.session.remove()
            for pk in pks:
                task.apply(args=[pk], throw=True)
            return len(pks)

        for name, step in (("intake", intake), ("worker", worker)):
            profiler = None
            if args.pyinstrument == name:
                from pyinstrument import Profiler

                profiler = Profiler(interval=0.0002)
                profiler.start()
            started = time.perf_counter()
            step()
            elapsed = time.perf_counter() - started
            if profiler is not None:
                profiler.stop()
                print(profiler.output_text(unicode=False, color=False, show_all=False),
                      file=sys.stderr)
            say(f"{name}: {elapsed / (args.events - 1) * 1000:.3f} ms per event "
                f"({args.events - 1} events, one thread)")
    finally:
        stack.__exit__(None, None, None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
