from django.apps import AppConfig
from django.db.models.signals import post_migrate


class SessionadminConfig(AppConfig):
    name = "sessionadmin"
    verbose_name = "Session admin"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.core.signals import request_finished

        from sessionadmin.logs import clear_ids
        from sessionadmin.roles import ensure_roles

        # Connected without a sender: it must run after auth has created the permissions.
        post_migrate.connect(ensure_roles, dispatch_uid="sessionadmin.ensure_roles")
        # The request and session ids of log lines end with their request (RequestIdMiddleware).
        request_finished.connect(clear_ids, dispatch_uid="sessionadmin.clear_log_ids")
