"""Development tooling, apart from the site's configuration: the embedded PostgreSQL and Redis
(``embedded``) and what ``./run`` starts and supervises (``launcher``). Production runs neither;
the settings only read names from ``embedded`` (nothing starts on import)."""
