from django.urls import path

from search import views

urlpatterns = [
    path("", views.search_page, name="search"),
    path("image/", views.search_by_image_page, name="search-image"),
    path("similar/<int:image_id>/", views.similar_page, name="similar"),
]
