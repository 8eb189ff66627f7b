from django.contrib import admin
from django.contrib.auth.decorators import login_not_required
from django.templatetags.static import static
from django.urls import include, path
from django.views.generic import RedirectView

from sessionadmin import api, maintenance_views, mcp_views, metrics_views, views

urlpatterns = [
    path("admin/", admin.site.urls),
    # Browsers ask for /favicon.ico before reading any <link rel="icon">; no login for an icon.
    path("favicon.ico", login_not_required(RedirectView.as_view(url=static("sessionadmin/favicon.svg"), permanent=True))),
    path("accounts/", include("django.contrib.auth.urls")),
    # Dashboard (sessionadmin/views.py)
    path("", views.session_list, name="session_list"),
    path("sessions/new/", views.session_create, name="session_create"),
    path("sessions/kill/", views.session_bulk_kill, name="session_bulk_kill"),
    path("sessions/<uuid:session_id>/", views.session_detail, name="session_detail"),
    path("sessions/<uuid:session_id>/workspace/", views.session_workspace, name="session_workspace"),
    path("sessions/<uuid:session_id>/kill/", views.session_kill, name="session_kill"),
    path("sessions/<uuid:session_id>/pin/", views.session_pin, name="session_pin"),
    path("sessions/<uuid:session_id>/prompt/", views.session_prompt, name="session_prompt"),
    path("orgs/", views.org_list, name="org_list"),
    path("orgs/new/", views.org_create, name="org_create"),
    path("orgs/<str:org_id>/edit/", views.org_edit, name="org_edit"),
    # MCP (sessionadmin/mcp_views.py)
    path("sessions/<uuid:session_id>/mcp/", mcp_views.session_mcp, name="session_mcp"),
    path("sessions/<uuid:session_id>/mcp/attach/", mcp_views.session_mcp_attach, name="session_mcp_attach"),
    path("sessions/<uuid:session_id>/mcp/<slug:client_id>/refresh/", mcp_views.session_mcp_refresh, name="session_mcp_refresh"),
    path("sessions/<uuid:session_id>/mcp/<slug:client_id>/detach/", mcp_views.session_mcp_detach, name="session_mcp_detach"),
    path(
        "sessions/<uuid:session_id>/mcp/<slug:client_id>/tools/<str:tool>/", mcp_views.session_mcp_tool, name="session_mcp_tool"
    ),
    path(
        "sessions/<uuid:session_id>/mcp/<slug:client_id>/tools/<str:tool>/calls/<str:call_id>/",
        mcp_views.session_mcp_call,
        name="session_mcp_call",
    ),
    path(
        "sessions/<uuid:session_id>/mcp/<slug:client_id>/tools/<str:tool>/approve/",
        mcp_views.session_mcp_approve,
        name="session_mcp_approve",
    ),
    path("sessions/<uuid:session_id>/mcp/feed/", mcp_views.session_mcp_feed, name="session_mcp_feed"),
    path(
        "sessions/<uuid:session_id>/mcp/<slug:client_id>/list/<slug:kind>/",
        mcp_views.session_mcp_listing,
        name="session_mcp_listing",
    ),
    path("mcp/servers/", mcp_views.mcp_server_list, name="mcp_server_list"),
    path("mcp/servers/new/", mcp_views.mcp_server_edit, name="mcp_server_create"),
    path("mcp/servers/<int:pk>/", mcp_views.mcp_server_edit, name="mcp_server_edit"),
    path("mcp/servers/<int:pk>/delete/", mcp_views.mcp_server_delete, name="mcp_server_delete"),
    # Maintenance (sessionadmin/maintenance_views.py)
    path("maintenance/", maintenance_views.maintenance_page, name="maintenance"),
    path("maintenance/run/", maintenance_views.maintenance_run, name="maintenance_run"),
    # Prometheus (sessionadmin/metrics_views.py)
    path("metrics", metrics_views.metrics_view, name="metrics"),
    # Runtime API (sessionadmin/api.py) and /healthz
    *api.urlpatterns(),
]
