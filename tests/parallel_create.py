"""Child process for the concurrency tests: waits for a start signal (a file), then tries to
create sessions through the manager and prints one JSON line of outcomes.

    python -m tests.parallel_create <start-file> <workspace-root> <user_id> <org_id> <attempts> <max_concurrent>
"""

from __future__ import annotations

import json
import os
import sys
import time


def main() -> None:
    start_file, root, user_id, org_id, attempts, max_concurrent = sys.argv[1:7]
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sessionadmin.settings")
    import django

    django.setup()
    from sessionadmin.manager import MaxSessionsReached, SessionManager

    manager = SessionManager(root, int(max_concurrent))
    deadline = time.monotonic() + 30
    while not os.path.exists(start_file) and time.monotonic() < deadline:
        time.sleep(0.005)
    created, rejected = [], []
    for _ in range(int(attempts)):
        try:
            created.append(str(manager.create_session(user_id, org_id, actor="test:parallel").id))
        except MaxSessionsReached as exc:
            rejected.append(exc.limit)
    print(json.dumps({"created": created, "rejected": rejected}))


if __name__ == "__main__":
    main()
