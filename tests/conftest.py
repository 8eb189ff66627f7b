import os

# Tests never read the developer's own var/ secrets or queues.
os.environ.setdefault("SESSIONADMIN_LOG_LEVEL", "WARNING")
