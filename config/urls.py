from django.contrib import admin
from django.urls import include, path

from gallery.views import accounts
from kernel.views import health
from search.api import api

urlpatterns = [
    path("health/", health, name="health"),
    path("admin/", admin.site.urls),
    # Ahead of Django's own route of the same name: the same view, rate-limited.
    path("accounts/password_reset/", accounts.password_reset, name="password_reset"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("api/", include("search.urls")),
    path("api/", api.urls),
    path("search/", include("search.page_urls")),
    path("", include("gallery.urls")),
]

# Whole-site error pages: plain for people, JSON under /api/; they never need the database.
handler400 = "kernel.views.bad_request"
handler403 = "kernel.views.permission_denied"
handler404 = "kernel.views.page_not_found"
handler500 = "kernel.views.server_error"
