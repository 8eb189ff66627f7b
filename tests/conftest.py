import os

# Tests never read the developer's own var/ secrets or queues.
os.environ.setdefault("SESSIONADMIN_LOG_LEVEL", "WARNING")


def pytest_configure(config: object) -> None:
    # The personas are created per test in TransactionTestCases; the production hasher (PBKDF2,
    # 1,000,000 rounds) costs ~0.5-1 s per user on this machine. Tests check roles, not hashing.
    from django.conf import settings

    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
