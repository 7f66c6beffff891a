from django.contrib import admin
from django.urls import include, path

from gallery.views import accounts
from kernel.views import health, replicas_status
from search.api import api
from workers.views import healthz, metrics

urlpatterns = [
    path("health/", health, name="health"),
    # Readiness of every part (database, cache, broker, storage, live workers) and Prometheus.
    path("healthz", healthz, name="healthz"),
    path("metrics", metrics, name="metrics"),
    # Ahead of the admin's own URLs, behind its staff sign-in check.
    path("admin/replicas/", admin.site.admin_view(replicas_status), name="admin-replicas"),
    path("admin/", admin.site.urls),
    # Ahead of Django's own route of the same name: the same view, rate-limited.
    path("accounts/password_reset/", accounts.password_reset, name="password_reset"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("api/", include("search.api_urls")),
    path("api/", api.urls),
    path("search/", include("search.urls")),
    path("", include("gallery.urls")),
]

# Whole-site error pages: plain for people, JSON under /api/; they never need the database.
handler400 = "kernel.views.bad_request"
handler403 = "kernel.views.permission_denied"
handler404 = "kernel.views.page_not_found"
handler500 = "kernel.views.server_error"
