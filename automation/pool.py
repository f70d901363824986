"""The embedded layout's scaling (`make run`): grow or shrink, through Celery's remote
control, the pool of the worker that consumes a queue. Run by the scaling playbook's
embedded tasks; prints {"before", "after", "changed"} as JSON.

    python -m automation.pool --queue orders --workers 4 [--check] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys


def pool_sizes(celery, queue: str, *, timeout: float = 3.0) -> dict[str, int]:
    """Pool processes of each worker consuming `queue`."""
    inspect = celery.control.inspect(timeout=timeout)
    consuming = [node for node, consumed in (inspect.active_queues() or {}).items()
                 if any(q.get("name") == queue for q in consumed)]
    stats = inspect.stats() or {}
    return {node: len((stats.get(node) or {}).get("pool", {}).get("processes", []))
            for node in consuming}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queue", required=True)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    from service import create_app

    celery = create_app().extensions["celery"]
    sizes = pool_sizes(celery, args.queue)
    if not sizes:
        print(json.dumps({"error": f"no running worker consumes {args.queue}"}))
        return 2
    before = sum(sizes.values())
    # One node takes the whole difference; a node keeps at least one process.
    node = max(sizes, key=sizes.get)
    delta = max(args.workers, len(sizes)) - before
    if delta and not args.check:
        if delta > 0:
            celery.control.pool_grow(delta, destination=[node], reply=True)
        else:
            celery.control.pool_shrink(-delta, destination=[node], reply=True)
    after = before + delta
    print(json.dumps({"before": before, "after": after, "changed": delta != 0}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
