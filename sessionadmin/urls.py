from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    # Dashboard (sessionadmin/views.py)
    # MCP (sessionadmin/mcp_views.py)
    # Maintenance (sessionadmin/maintenance_views.py)
    # Runtime API (sessionadmin/api.py)
]
