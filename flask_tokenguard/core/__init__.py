"""Protocol and session logic: tokens, grants, sessions, clients, users, security.

Nothing here imports Flask or werkzeug; all I/O goes through the ``Store`` interface.
"""
