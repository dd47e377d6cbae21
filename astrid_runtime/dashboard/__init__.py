"""The web dashboard: a listening socket the kernel owns on 127.0.0.1, a login token,
the sessions and their diffs, the live bus and the pending approvals, answerable in the
browser (http.py: the HTTP/1.1 server; app.py: the routes; service.py: the kernel side)."""
