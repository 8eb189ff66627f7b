import os

# Tests never read the developer's own var/ secrets or queues.
os.environ.setdefault("SESSIONADMIN_LOG_LEVEL", "WARNING")
# The test MCP servers listen on loopback, which the outbound URL policy refuses unless listed.
# The variable reaches the processes the tests start (the Celery worker); this process loaded
# its settings before this file, so pytest_configure sets them too.
os.environ["SESSIONADMIN_MCP_ALLOWED_HOSTS"] = "127.0.0.1"


def pytest_configure(config: object) -> None:
    from django.conf import settings

    settings.SESSIONADMIN_MCP_ALLOWED_HOSTS = ["127.0.0.1"]
