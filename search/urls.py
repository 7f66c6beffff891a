from django.urls import path

from search import views

urlpatterns = [
    path("", views.search_page, name="search"),
    path("image/", views.search_by_image_page, name="search-image"),
    path("similar/<int:image_id>/", views.similar_page, name="similar"),
    path("save/", views.search_save, name="search-save"),
    path("saved/<int:collection_id>/", views.smart_collection_view, name="search-saved"),
    path(
        "saved/<int:collection_id>/hide/<int:image_id>/",
        views.smart_collection_hide,
        name="search-saved-hide",
    ),
    path(
        "saved/<int:collection_id>/pin/<int:image_id>/",
        views.smart_collection_pin,
        name="search-saved-pin",
    ),
]
