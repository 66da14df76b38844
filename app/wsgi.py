"""WSGI entry point for uWSGI (`module = app.wsgi:application`), loaded in each worker after the fork."""

from app import create_app

application = create_app()
