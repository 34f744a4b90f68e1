"""What every ``pmkt`` command module shares: the settings handle and the run state.

The command modules import this module, never the package (``cluster.cli``), which imports them
all to register them; so the imports stay one way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import click

from cluster.core.settings import Settings, load_settings

__all__ = ["CliContext", "pass_ctx", "run_state", "shutting_down_ray", "sigterm_as_interrupt"]

#: The command being run (its path, e.g. ``pmkt tune ctr``) and ``-v``'s count, for main()'s error line.
run_state: dict = {"path": "pmkt", "verbose": 0}


class CliContext:
    """The root group's options; the settings are loaded when a command first asks for them."""

    def __init__(self, profile: str | None, settings_file: str | None) -> None:
        self.profile = profile
        self.settings_file = settings_file
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(profile=self.profile, path=self.settings_file)
            # Ray reads RAY_AUTH_MODE / RAY_AUTH_TOKEN_PATH once, when it is first imported: set
            # them before any command imports it (a token applied later is silently not sent).
            import os

            from ray_apps.runtime import ray_auth_env

            os.environ.update(ray_auth_env(self._settings))
        return self._settings


pass_ctx = click.make_pass_decorator(CliContext)


@contextlib.contextmanager
def shutting_down_ray() -> Iterator[None]:
    """Run the block, then shut down the Ray this process started (also when the block fails)."""
    from ray_apps.runtime import shutdown_ray

    try:
        yield
    finally:
        shutdown_ray()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM (what systemd and Kubernetes send) stops the command as Ctrl-C
    does: KeyboardInterrupt in the main thread. Later SIGTERMs and Ctrl-Cs are ignored while the
    command shuts down, so a second signal cannot cut its cleanup short (SIGKILL still can)."""
    import signal

    def stop(_signum, _frame) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise KeyboardInterrupt

    previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])
