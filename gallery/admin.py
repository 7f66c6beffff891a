from django.contrib import admin
from django.db.models import Count, QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from gallery.models import Caption, Collection, CollectionItem, Image


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
    readonly_fields = ("thumbnail", "width", "height", "sha256", "created_at")
    raw_id_fields = ("owner",)
    inlines = [CaptionInline]
    date_hierarchy = "created_at"
    list_select_related = ("owner",)

    @admin.display(description="Preview")
    def thumbnail(self, obj: Image) -> str:
        if not obj.pk:
            return "-"
        url = reverse("image-thumb-size", args=[obj.pk, 128])
        return format_html('<img src="{}" alt="" style="max-height:64px;max-width:96px">', url)


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
