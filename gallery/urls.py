from django.templatetags.static import static
from django.urls import path
from django.views.generic import RedirectView

from gallery import views

urlpatterns = [
    path("", views.home, name="home"),
    path("favicon.ico", RedirectView.as_view(url=static("favicon.svg"), permanent=True)),
    path("images/<int:image_id>/", views.image_detail, name="image"),
    path("images/<int:image_id>/status", views.image_status, name="image-status"),
    path("images/<int:image_id>/visibility", views.image_visibility, name="image-visibility"),
    path("images/<int:image_id>/delete", views.image_delete_view, name="image-delete"),
    path("images/<int:image_id>/save", views.collection_picker, name="collection-picker"),
    path("images/<int:image_id>/file", views.image_file, name="image-file"),
    path("images/<int:image_id>/thumb", views.image_thumbnail, name="image-thumb"),
    path("images/<int:image_id>/thumb/<int:size>", views.image_thumbnail, name="image-thumb-size"),
    path("upload/", views.upload, name="upload"),
    path("accounts/signup/", views.signup, name="signup"),
    path("accounts/tokens/", views.api_tokens, name="api-tokens"),
    path("collections/", views.collections_index, name="collections"),
    path("collections/add", views.collection_add, name="collection-add"),
    path("collections/<int:collection_id>/", views.collection_detail, name="collection"),
    path("collections/<int:collection_id>/edit", views.collection_edit, name="collection-edit"),
    path("c/<str:share_token>/", views.collection_shared, name="collection-shared"),
    path("selection/save", views.selection_save, name="selection-save"),
    path("selection/delete", views.selection_delete, name="selection-delete"),
]
