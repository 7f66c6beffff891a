from django.templatetags.static import static
from django.urls import path
from django.views.generic import RedirectView

from gallery.views import accounts, browse, collections, images, selection

urlpatterns = [
    path("", browse.home, name="home"),
    path("favicon.ico", RedirectView.as_view(url=static("favicon.svg"), permanent=True)),
    path("images/<int:image_id>/", images.image_detail, name="image"),
    path("images/<int:image_id>/status", images.image_status, name="image-status"),
    path("images/<int:image_id>/visibility", images.image_visibility, name="image-visibility"),
    path("images/<int:image_id>/delete", images.image_delete_view, name="image-delete"),
    path("images/<int:image_id>/details", images.image_details, name="image-details"),
    path("images/<int:image_id>/save", collections.collection_picker, name="collection-picker"),
    path("images/<int:image_id>/file", images.image_file, name="image-file"),
    path("images/<int:image_id>/thumb", images.image_thumbnail, name="image-thumb"),
    path("images/<int:image_id>/thumb/<int:size>", images.image_thumbnail, name="image-thumb-size"),
    path("upload/", images.upload, name="upload"),
    path("accounts/", accounts.account, name="account"),
    path("accounts/signup/", accounts.signup, name="signup"),
    path("accounts/tokens/", accounts.api_tokens, name="api-tokens"),
    path("collections/", collections.collections_index, name="collections"),
    path("collections/public/", collections.collections_public_index, name="collections-public"),
    path("collections/add", collections.collection_add, name="collection-add"),
    path("collections/<int:collection_id>/", collections.collection_detail, name="collection"),
    path(
        "collections/<int:collection_id>/edit",
        collections.collection_edit,
        name="collection-edit",
    ),
    path(
        "collections/<int:collection_id>/details",
        collections.collection_details,
        name="collection-details",
    ),
    path(
        "collections/<int:collection_id>/items/<int:image_id>/note",
        collections.collection_item_note,
        name="collection-item-note",
    ),
    path(
        "collections/<int:collection_id>/items/<int:image_id>/move",
        collections.collection_item_move_view,
        name="collection-item-move",
    ),
    path(
        "collections/<int:collection_id>/items/<int:image_id>/remove",
        collections.collection_item_remove_view,
        name="collection-item-remove",
    ),
    path(
        "collections/<int:collection_id>/share-link",
        collections.collection_share_rotate,
        name="collection-share-rotate",
    ),
    path("c/<str:share_token>/", collections.collection_shared, name="collection-shared"),
    path("selection/save", selection.selection_save, name="selection-save"),
    path("selection/delete", selection.selection_delete, name="selection-delete"),
]
