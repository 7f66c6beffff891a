from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import Count, QuerySet
from django.http import FileResponse, HttpRequest
from django.shortcuts import get_object_or_404
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html

from gallery.models import Caption, Collection, CollectionItem, Image
from gallery.views.images import image_file_response, image_thumbnail_response


class CaptionInline(admin.TabularInline):
    model = Caption
    extra = 0


@admin.register(Image)
class ImageAdmin(admin.ModelAdmin):
    list_display = (
        "thumbnail",
        "id",
        "original_filename",
        "source",
        "owner",
        "visibility",
        "split",
        "width",
        "height",
        "created_at",
    )
    list_display_links = ("thumbnail", "id")
    list_filter = ("source", "visibility", "split", "created_at")
    search_fields = ("original_filename", "sha256", "owner__username", "captions__text")
    readonly_fields = ("thumbnail", "original", "width", "height", "sha256", "created_at")
    raw_id_fields = ("owner",)
    inlines = [CaptionInline]
    date_hierarchy = "created_at"
    list_select_related = ("owner",)

    # Staff open every image, private uploads included, here and only here: the site's own file
    # URLs serve private images to their owner alone, as the upload form says. These URLs go
    # through the admin's staff check (admin_view) and the model's view permission.
    def get_urls(self) -> list[URLPattern]:
        own = [
            path(
                "<int:image_id>/file/",
                self.admin_site.admin_view(self.file_view),
                name="gallery_image_file",
            ),
            path(
                "<int:image_id>/thumb/<int:size>/",
                self.admin_site.admin_view(self.thumbnail_view),
                name="gallery_image_thumb",
            ),
        ]
        return own + super().get_urls()

    def _image_for_staff(self, request: HttpRequest, image_id: int) -> Image:
        if not self.has_view_permission(request):
            raise PermissionDenied
        return get_object_or_404(Image, pk=image_id)

    def file_view(self, request: HttpRequest, image_id: int) -> FileResponse:
        return image_file_response(self._image_for_staff(request, image_id))

    def thumbnail_view(self, request: HttpRequest, image_id: int, size: int) -> FileResponse:
        return image_thumbnail_response(self._image_for_staff(request, image_id), size)

    @admin.display(description="Preview")
    def thumbnail(self, obj: Image) -> str:
        if not obj.pk:
            return "-"
        url = reverse("admin:gallery_image_thumb", args=[obj.pk, 128])
        return format_html('<img src="{}" alt="" style="max-height:64px;max-width:96px">', url)

    @admin.display(description="File")
    def original(self, obj: Image) -> str:
        if not obj.pk:
            return "-"
        url = reverse("admin:gallery_image_file", args=[obj.pk])
        return format_html('<a href="{}">{}</a>', url, obj.original_filename or "open")


@admin.register(Caption)
class CaptionAdmin(admin.ModelAdmin):
    list_display = ("id", "image", "position", "text")
    search_fields = ("text",)
    raw_id_fields = ("image",)


class CollectionItemInline(admin.TabularInline):
    model = CollectionItem
    extra = 0
    raw_id_fields = ("image",)


@admin.register(Collection)
class CollectionAdmin(admin.ModelAdmin):
    list_display = ("name", "owner", "visibility", "item_count", "updated_at")
    list_filter = ("visibility", "updated_at")
    search_fields = ("name", "description", "owner__username")
    readonly_fields = ("share_token", "created_at", "updated_at")
    raw_id_fields = ("owner",)
    inlines = [CollectionItemInline]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Collection]:
        return super().get_queryset(request).annotate(item_total=Count("items"))

    @admin.display(description="Items", ordering="item_total")
    def item_count(self, obj: Collection) -> int:
        return obj.item_total


@admin.register(CollectionItem)
class CollectionItemAdmin(admin.ModelAdmin):
    list_display = ("collection", "image", "query", "added_at")
    search_fields = ("collection__name", "query", "note")
    raw_id_fields = ("collection", "image")
