"""The web app: a Flask app factory, a JSON API and a page that uses it (all assets served locally).

Run it with ``biasscope serve`` (waitress) or ``flask --app biasscope.web:create_app run``.
"""

from .app import DEFAULTS, WebState, create_app, is_loopback

__all__ = ["DEFAULTS", "WebState", "create_app", "is_loopback"]
