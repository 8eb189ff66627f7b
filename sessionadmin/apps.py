from django.apps import AppConfig
from django.db.models.signals import post_migrate


class SessionadminConfig(AppConfig):
    name = "sessionadmin"
    verbose_name = "Session admin"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from sessionadmin.roles import ensure_roles

        # Connected without a sender: it must run after auth has created the permissions.
        post_migrate.connect(ensure_roles, dispatch_uid="sessionadmin.ensure_roles")
