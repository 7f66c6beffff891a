from django.apps import AppConfig


class GalleryConfig(AppConfig):
    name = "gallery"
    verbose_name = "Gallery"

    def ready(self) -> None:
        # HEIC/HEIF (iPhones and many Android phones) through Pillow, in every process that
        # opens images: the web (uploads, thumbnails) and the workers (embedding).
        from pillow_heif import register_heif_opener

        register_heif_opener()
