"""Settings of the embedding workers in tests/workers/test_multi_host.py: production's, with the
pipeline's DEBUG lines on ("holds images [...]", "embedded images [...]"), so that each worker's
own log says which images went through its model."""

from config.settings.production import *  # noqa: F403
from config.settings.production import LOGGING as PRODUCTION_LOGGING

LOGGING = {
    **PRODUCTION_LOGGING,
    "loggers": {**PRODUCTION_LOGGING["loggers"], "workers.pipeline": {"level": "DEBUG"}},
}
