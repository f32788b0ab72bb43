"""The API blueprints, one package per resource family."""
