"""What every app imports: the errors it raises for users and their HTTP responses, request
parameter parsing, the middleware, the database watchdog, the fail-open cache, and the broker's
connection errors. It imports no app and nothing of ``config``: apps stand on it, and ``config``
composes them."""
