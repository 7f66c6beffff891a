from __future__ import annotations

from typing import TYPE_CHECKING, TypedDict

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html

from gallery.models import Caption, Collection, CollectionItem, Image
from gallery.services.images import images_staff_delete, images_staff_visibility_set
from gallery.templatetags.gallery_ui import image_display_name, utc_offset
from gallery.views.images import image_file_response, image_thumbnail_response
from kernel.errors import ApplicationError, InvalidInput
from kernel.params import int_param

if TYPE_CHECKING:
    from django_stubs_ext import WithAnnotations


# The admin carries the site's name, not "Django administration".
admin.site.site_header = "Image search administration"
admin.site.site_title = "Image search admin"
admin.site.index_title = "Images, collections and models"


class CaptionInline(admin.TabularInline):
    model = Caption
    extra = 0


class OwnerFilter(admin.SimpleListFilter):
    """One owner, by the user id in the URL (each row's owner links to it), or the data set's
    ownerless images. A site with thousands of users gets no list of every one of them; the
    search box finds images by owner name."""

    title = "owner"
    parameter_name = "owner"
    NONE = "none"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple]:
        choices: list[tuple] = [(self.NONE, "No owner (data set)")]
        value = self.value()
        if value and value != self.NONE:
            try:
                user_id = int_param(value, name="owner", low=1, high=2**31 - 1)
            except InvalidInput:
                return choices
            user = get_user_model().objects.filter(pk=user_id).first()
            if user is not None:
                choices.append((value, user.get_username()))
        return choices

    def queryset(self, request: HttpRequest, queryset: QuerySet[Image]) -> QuerySet[Image]:
        value = self.value()
        if value is None:
            return queryset
        if value == self.NONE:
            return queryset.filter(owner__isnull=True)
        try:
            owner_id = int_param(value, name="owner", low=1, high=2**31 - 1)
        except InvalidInput:
            raise IncorrectLookupParameters(f"owner must be a user id or {self.NONE!r}") from None
        return queryset.filter(owner_id=owner_id)


def count_text(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


@admin.register(Image)
class ImageAdmin(admin.ModelAdmin):
    class Media:
        # The preview column's size (a sheet, not style="...": the CSP allows no inline style).
        css = {"all": ["gallery_admin.css"]}

    list_display = (
        "thumbnail",
        "id",
        "original_filename",
        "taken",
        "source",
        "owner_link",
        "visibility",
        "split",
        "width",
        "height",
        "created_at",
    )
    list_display_links = ("thumbnail", "id")
    # workers/admin.py adds the embedding-status filter after the owner's, and the re-embed
    # and retry actions first, to this admin (it registers a subclass in its place).
    list_filter = ("source", "visibility", OwnerFilter, "split", "created_at")
    search_fields = ("original_filename", "sha256", "owner__username", "captions__text")
    readonly_fields = (
        "thumbnail", "original", "width", "height", "sha256", "created_at",
        # What the file's EXIF said, read at upload or import (or by backfill_photo_facts).
        "taken", "camera_make", "camera_model", "latitude", "longitude",
    )  # fmt: skip
    # Shown as one "taken" line with its offset instead.
    exclude = ("taken_at", "taken_offset")
    autocomplete_fields = ("owner",)
    inlines = [CaptionInline]
    date_hierarchy = "created_at"
    list_select_related = ("owner",)
    # Each action below goes through the selection in chunks (gallery.services.images), so
    # "select all" on a filter of 100,000 images is fine; Django's own delete would load and list
    # every row and leave the files behind.
    actions = ["make_public", "make_private", "delete_images"]

    def get_actions(self, request: HttpRequest) -> dict:
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

    # The delete button of one image: the same service, so its files go too.
    def delete_model(self, request: HttpRequest, obj: Image) -> None:
        images_staff_delete(images=Image.objects.filter(pk=obj.pk))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Image]) -> None:
        images_staff_delete(images=queryset)

    @admin.display(description="Taken", ordering="taken_at", empty_value="-")
    def taken(self, obj: Image) -> str | None:
        """When the photo was taken as its camera showed it, with the UTC offset when known."""
        taken = obj.taken_local
        if taken is None:
            return None
        offset = "" if obj.taken_offset is None else f" {utc_offset(obj.taken_offset)}"
        return f"{taken:%Y-%m-%d %H:%M}{offset}"

    @admin.display(description="Owner", ordering="owner__username")
    def owner_link(self, obj: Image) -> str:
        if obj.owner is None:
            return "-"
        url = reverse("admin:gallery_image_changelist") + f"?{OwnerFilter.parameter_name}="
        return format_html(
            '<a href="{}{}" title="Only this owner\'s images">{}</a>',
            url, obj.owner_id, obj.owner.get_username(),
        )  # fmt: skip

    def action_confirm(
        self,
        request: HttpRequest,
        queryset: QuerySet[Image],
        *,
        action: str,
        title: str,
        submit: str,
        form: forms.Form | None = None,
        warning: str = "",
    ) -> TemplateResponse:
        """The page between choosing an action and running it: how many images, a form if the
        action needs one, and the selection carried as it came (the page's ticked ids and
        "select all"), never as a list of every id."""
        counts = queryset.aggregate(
            total=Count("pk", distinct=True),
            uploads=Count("pk", filter=Q(source=Image.Source.UPLOAD), distinct=True),
        )
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": title,
            "action": action,
            "submit": submit,
            "form": form,
            "warning": warning,
            "total": counts["total"],
            "uploads": counts["uploads"],
            "dataset": counts["total"] - counts["uploads"],
            "select_across": request.POST.get("select_across") == "1",
            "selected": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "back": request.get_full_path(),
        }
        return TemplateResponse(request, "admin/gallery/image/action_confirmation.html", context)

    def _visibility(self, request: HttpRequest, queryset: QuerySet[Image], visibility: str) -> None:
        try:
            result = images_staff_visibility_set(images=queryset, visibility=visibility)
        except ApplicationError as exc:
            self.message_user(request, exc.message, messages.ERROR)
            return
        text = f"{count_text(result.changed, 'upload')} made {visibility}"
        if result.unchanged:
            text += f"; {result.unchanged} already were"
        self.message_user(request, text + ".")
        if result.dataset_skipped:
            self.message_user(
                request,
                f"Skipped {count_text(result.dataset_skipped, 'Flickr30k data-set image')}: "
                "data-set images always stay public.",
                messages.WARNING,
            )

    @admin.action(description="Make public (uploads)", permissions=["change"])
    def make_public(self, request: HttpRequest, queryset: QuerySet[Image]) -> None:
        self._visibility(request, queryset, Image.Visibility.PUBLIC)

    @admin.action(description="Make private (uploads; data-set images stay public)",
                  permissions=["change"])  # fmt: skip
    def make_private(self, request: HttpRequest, queryset: QuerySet[Image]) -> None:
        self._visibility(request, queryset, Image.Visibility.PRIVATE)

    @admin.action(description="Delete selected images with their files", permissions=["delete"])
    def delete_images(
        self, request: HttpRequest, queryset: QuerySet[Image]
    ) -> TemplateResponse | None:
        if request.POST.get("post") != "yes":
            return self.action_confirm(
                request, queryset, action="delete_images", title="Delete images",
                submit="Yes, delete them",
                warning="Their captions, embeddings, embedding jobs and places in collections "
                "go with them, and their files and thumbnails are removed. This cannot be undone.",
            )  # fmt: skip
        deleted = images_staff_delete(images=queryset)
        self.message_user(
            request,
            f"Deleted {count_text(deleted, 'image')} with their captions, embeddings, collection "
            "items, files and thumbnails.",
        )
        return None

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

    def file_view(self, request: HttpRequest, image_id: int) -> HttpResponseBase:
        return image_file_response(request, self._image_for_staff(request, image_id))

    def thumbnail_view(self, request: HttpRequest, image_id: int, size: int) -> HttpResponseBase:
        return image_thumbnail_response(request, self._image_for_staff(request, image_id), size)

    @admin.display(description="Preview")
    def thumbnail(self, obj: Image) -> str:
        if not obj.pk:
            return "-"
        url = reverse("admin:gallery_image_thumb", args=[obj.pk, 128])
        # The list links the preview to the image's page: its alt text is the link's name.
        name = image_display_name(obj, first_caption="")
        return format_html('<img src="{}" alt="{}" class="admin-thumb">', url, name)

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


class _ItemTotal(TypedDict):
    item_total: int  # CollectionAdmin.get_queryset's annotation


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
    def item_count(self, obj: WithAnnotations[Collection, _ItemTotal]) -> int:
        return obj.item_total


@admin.register(CollectionItem)
class CollectionItemAdmin(admin.ModelAdmin):
    list_display = ("collection", "image", "query", "added_at")
    search_fields = ("collection__name", "query", "note")
    raw_id_fields = ("collection", "image")
