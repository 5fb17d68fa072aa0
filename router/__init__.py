"""The query router: Flask app factory, API blueprints, validation, planner, executor, cache."""
from router.app import create_app

__all__ = ["create_app"]
