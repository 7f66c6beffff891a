from django.contrib import admin
from django.urls import include, path

from search.api import api

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("api/", include("search.urls")),
    path("api/", api.urls),
    path("search/", include("search.page_urls")),
    path("", include("gallery.urls")),
]
