"""Production settings: the base, plus refusals to start in an unsafe configuration."""

from django.core.exceptions import ImproperlyConfigured

from config.settings.base import *  # noqa: F403
from config.settings.base import DATABASE_URL, DEFAULT_SECRET_KEY, env_bool

DEBUG = env_bool("DEBUG", False)
if DEBUG:
    raise ImproperlyConfigured("Production settings refuse DEBUG=true; unset DEBUG.")
if SECRET_KEY == DEFAULT_SECRET_KEY:  # noqa: F405
    raise ImproperlyConfigured(
        "Production settings refuse the default SECRET_KEY; set SECRET_KEY to a long random "
        "value (python -c 'import secrets; print(secrets.token_urlsafe(50))')."
    )

if not DATABASE_URL:
    raise ImproperlyConfigured(
        "Production settings need DATABASE_URL (PostgreSQL with pgvector >= 0.8), e.g. "
        "postgresql://user:password@db:5432/imagesearch; the embedded database is for ./run only."
    )

SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", True)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", True)
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_CONTENT_TYPE_NOSNIFF = True
