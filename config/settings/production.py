"""Production settings: the base, plus refusals to start in an unsafe configuration."""

import os

from django.core.exceptions import ImproperlyConfigured

from config.settings.base import *  # noqa: F403
from config.settings.base import (
    CACHE_URL,
    DATABASE_URL,
    DEFAULT_SECRET_KEY,
    SILENCED_SYSTEM_CHECKS,
    env_bool,
)

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

if not (os.environ.get("CELERY_BROKER_URL") or os.environ.get("REDIS_URL")):
    # Without one, processes would look for ./run's embedded Redis socket under the code's
    # folder: every upload's job and the rate-limit cache would quietly go nowhere.
    raise ImproperlyConfigured(
        "Production settings need CELERY_BROKER_URL (or REDIS_URL), e.g. redis://redis:6379/0; "
        "the embedded Redis is for ./run only."
    )

if not CACHE_URL:
    # The broker is not Redis and CACHE_URL is unset: each process would count rate limits and
    # sign-in failures on its own (a per-process memory cache), so every limit multiplies by
    # the number of web processes without a word.
    raise ImproperlyConfigured(
        "Production settings need CACHE_URL (a Redis URL, e.g. redis://:password@redis:6379/1) "
        "when CELERY_BROKER_URL is not a Redis URL: the rate limits and the sign-in lock-out "
        "must be shared by every web process."
    )

SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", True)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", True)
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_CONTENT_TYPE_NOSNIFF = True

# HTTPS only, as the Secure cookies above already assume: plain HTTP is redirected, and browsers
# are told to use HTTPS for a year (HSTS, subdomains included). Behind a TLS proxy that sets
# X-Forwarded-Proto (SECURE_PROXY_SSL_HEADER) nothing else is needed; a plain-HTTP trial sets
# SECURE_SSL_REDIRECT=false and SECURE_HSTS_SECONDS=0 (with the cookie settings false).
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
SECURE_HSTS_SECONDS = int(os.environ.get("SECURE_HSTS_SECONDS", 60 * 60 * 24 * 365))
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
# Preloading is the domain owner's decision (it binds every subdomain of the registrable domain,
# and anyone may submit a domain that sends the directive), so it is off unless asked for, and
# check --deploy's reminder about it (W021) is silenced rather than answered by default.
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
SILENCED_SYSTEM_CHECKS = [
    *SILENCED_SYSTEM_CHECKS,
    *([] if SECURE_HSTS_PRELOAD else ["security.W021"]),
]
