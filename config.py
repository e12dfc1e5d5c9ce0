"""The original specification's configuration check, run from the project folder:

    python -c "from config import config; print(config.environment)"

`config` is the service's Settings, read from the environment and `.env` exactly as the
server reads them; an invalid value prints one line naming the variable and exits 2.
`avito-ai config` prints the whole effective configuration.
"""

from __future__ import annotations

from avito_ai.cli import settings_or_exit

config = settings_or_exit()
