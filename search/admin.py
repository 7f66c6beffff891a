from django.contrib import admin

from search.models import EmbeddingJob, ImageEmbedding


@admin.register(ImageEmbedding)
class ImageEmbeddingAdmin(admin.ModelAdmin):
    list_display = ("id", "image", "model_id", "dimensions", "created_at")
    list_filter = ("model_id", "created_at")
    search_fields = ("image__original_filename", "image__id")
    raw_id_fields = ("image",)
    # Vectors are hundreds of floats: show their size, not an editable blob.
    exclude = ("vector",)
    readonly_fields = ("dimensions", "created_at")
    list_select_related = ("image",)

    @admin.display(description="Dim")
    def dimensions(self, obj: ImageEmbedding) -> int:
        return len(obj.vector) if obj.vector is not None else 0


@admin.register(EmbeddingJob)
class EmbeddingJobAdmin(admin.ModelAdmin):
    list_display = ("id", "image", "model_id", "status", "attempts", "error", "updated_at")
    list_filter = ("model_id", "status", "updated_at")
    search_fields = ("error", "image__original_filename", "image__id")
    raw_id_fields = ("image",)
    readonly_fields = ("created_at", "updated_at")
    list_select_related = ("image",)
