# The test process's own VAR_DIR and secret key are set by the plugin tests/isolation.py (loaded
# with -p from pyproject.toml): pytest-django imports the settings before this file is read.


def pytest_configure(config: object) -> None:
    # The personas are created per test in TransactionTestCases; the production hasher (PBKDF2,
    # 1,000,000 rounds) costs ~0.5-1 s per user on this machine. Tests check roles, not hashing.
    from django.conf import settings

    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
