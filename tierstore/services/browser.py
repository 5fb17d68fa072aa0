"""The headless browser the dashboard test drives: Debian's chromium and its chromedriver.

Not a server (nothing to start or stop): `ensure_browser` installs the two Debian packages when
they are missing, the same way redis.py installs redis-server, and returns their paths, so
Selenium uses the system driver and Selenium Manager downloads nothing.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from tierstore.services.support import ServiceError, apt_install, say

PACKAGES = ["chromium", "chromium-driver"]


@dataclass(frozen=True)
class Browser:
    chromium: Path
    chromedriver: Path


def _find(name: str) -> Path | None:
    found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    return Path(found) if found else None


def installed() -> Browser | None:
    """The installed chromium and chromedriver, or None when either is missing."""
    chromium, driver = _find("chromium"), _find("chromedriver")
    return Browser(chromium, driver) if chromium and driver else None


def ensure_browser(log_file: Path) -> Browser:
    """chromium and chromedriver, installed with apt-get (as root) when missing.

    Raises ServiceError (naming log_file) when the install fails or leaves either missing.
    """
    found = installed()
    if found is not None:
        return found
    log_file.parent.mkdir(parents=True, exist_ok=True)
    say("browser: chromium or chromedriver missing, installing the Debian packages")
    apt_install(PACKAGES, log_file)
    found = installed()
    if found is None:
        raise ServiceError(f"chromium/chromedriver still missing after apt-get install; read {log_file}")
    return found
