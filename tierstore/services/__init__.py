"""Real local services for one tierstore instance: Redis, PostgreSQL, Trino and s3proxy.

Everything lives under the layout's home directory and every port comes from its port base, so
two instances run side by side. `up` installs what is missing, configures, starts the services
concurrently (detached, own session) and waits until each one really answers; `down` stops only
the processes whose PIDs `up` recorded; `status` reports one line per service.
"""
from tierstore.services.commands import SERVICE_NAMES, down, select, status, up
from tierstore.services.support import ServiceError

__all__ = ["SERVICE_NAMES", "ServiceError", "down", "select", "status", "up"]
