"""gunicorn settings of `tierstore serve` (`-c python:tierstore.gunicorn_conf`); the command line's
options override these.

SIGHUP stops the server like SIGTERM (graceful) instead of gunicorn's reload: a server started
from a terminal must not outlive the terminal's hang-up, and `tierstore serve` reads its settings
once anyway (a reload would not apply a changed setting to the migrations it ran). SIGINT and
SIGQUIT stop it at once, as in gunicorn. Either way the master stops its workers before it exits,
so nothing of the process group is left.
"""
from __future__ import annotations


def when_ready(server) -> None:
    server.handle_hup = server.handle_term


# gunicorn >= 25.1 opens a control socket at one path per user ($HOME/.gunicorn/gunicorn.ctl): two
# instances on one machine would share it and the first to stop deletes the other's. tierstore is
# run by its own commands, not by gunicornc: no control socket.
control_socket_disable = True


def _logconfig() -> dict:
    """gunicorn's own error log in the format of the `log_format` setting (tierstore/logs.py)."""
    from tierstore.logs import gunicorn_logconfig
    from tierstore.settings import load_settings

    settings = load_settings()
    return gunicorn_logconfig(settings.log_format, settings.log_level)


logconfig_dict = _logconfig()
