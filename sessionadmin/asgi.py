import os

from django.core.asgi import get_asgi_application

from sessionadmin.bootstrap import require_secret_key

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sessionadmin.settings")
application = get_asgi_application()
# Refuse to serve without a key: every login and CSRF check would fail, one request at a time.
require_secret_key()
