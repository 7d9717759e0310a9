"""The Flask layer: extension, endpoints, route guard, CLI, WSGI middleware."""
