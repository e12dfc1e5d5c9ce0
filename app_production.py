"""Entry point of the original specification (README_PRODUCTION.md).

gunicorn -c gunicorn_config.py app_production:app   # production server
python app_production.py                            # development server
"""

from __future__ import annotations

from avito_ai.app import create_app
from avito_ai.cli import main, settings_or_exit
from avito_ai.gunicorn_worker import inherited_settings
from avito_ai.observability.logging import configure_logging

if __name__ == "__main__":
    main(["serve"])
else:
    # In a gunicorn worker, the configuration its master validated (kept across a reload
    # the master refused); otherwise read now.
    settings = inherited_settings() or settings_or_exit()
    configure_logging(settings.log_level, settings.log_format, settings.log_file)
    app = create_app(settings)
