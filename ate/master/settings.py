"""User settings of the master (protocol.md section 8).

Six settings, each ``{"active": bool, "value": int}``, are sent to the TestApps with
every ``next`` (6.1), shown and changed in the web UI (8.3) and reset to their defaults
at every accepted load (5.6).

With a path the settings are persisted as JSON (indent 4, sorted keys), written
atomically: a temporary file in the same directory is written, flushed and fsynced,
then renamed over the target, and the directory is fsynced.  Without a path they live
in memory only.

No reactor is needed: everything here is synchronous and small.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from typing import Any, Iterable

from twisted.logger import Logger

__all__ = ["NAMES", "SettingsError", "UserSettings", "default_settings"]

NAMES: tuple[str, ...] = (
    "stop_on_fail",
    "single_step",
    "stop_on_test",
    "trigger_on_test",
    "trigger_on_fail",
    "trigger_site_specific",
)

_DEFAULT_ACTIVE = False
_DEFAULT_VALUE = -1
_INT_STRING = re.compile(r"[+-]?[0-9]+", re.ASCII)


class SettingsError(ValueError):
    """A user settings change was refused.

    The message names the offending setting (or entry) and the problem.
    """


def default_settings() -> dict[str, dict[str, Any]]:
    """Return a fresh ``{name: {"active": False, "value": -1}}`` mapping."""
    return {name: {"active": _DEFAULT_ACTIVE, "value": _DEFAULT_VALUE} for name in NAMES}


def _parse_value(name: str, value: Any) -> int:
    """Return ``value`` as an int per 8.3: missing/None -> -1, int or integer string.

    Booleans and floats are refused (``True`` is not a test number).
    """
    if value is None:
        return _DEFAULT_VALUE
    if isinstance(value, bool):
        raise SettingsError(f"setting {name!r}: value must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip()
        if _INT_STRING.fullmatch(text):
            return int(text)
        raise SettingsError(
            f"setting {name!r}: value must be an integer or an integer string, got {value!r}"
        )
    raise SettingsError(
        f"setting {name!r}: value must be an integer or an integer string, "
        f"got {type(value).__name__} {value!r}"
    )


def _parse_entry(name: str, entry: Any) -> dict[str, Any]:
    """Validate one ``{"active", "value"}`` mapping; return a fresh normalised dict."""
    if not isinstance(entry, dict):
        raise SettingsError(
            f"setting {name!r}: expected an object with 'active' and 'value', "
            f"got {type(entry).__name__}"
        )
    active = entry.get("active")
    if not isinstance(active, bool):
        raise SettingsError(f"setting {name!r}: 'active' must be a boolean, got {active!r}")
    return {"active": active, "value": _parse_value(name, entry.get("value"))}


class UserSettings:
    """The six user settings, optionally persisted at ``path``.

    At construction the file is read and merged over the defaults (8.2): a missing file
    is created; unknown keys are dropped with a warning; an invalid entry for a known
    name is replaced by its default with a warning; an unreadable or corrupt file is
    logged as an error, the defaults are used and the file is left untouched until the
    settings next change.  Failing to write the file is logged as an error and never
    raised: the settings stay in effect in memory.
    """

    log = Logger()

    def __init__(self, path: str | None) -> None:
        self._path = path
        self._settings: dict[str, dict[str, Any]] = default_settings()
        if path is not None:
            self._load()

    # -- reading -----------------------------------------------------------------------

    @property
    def path(self) -> str | None:
        """The settings file, or None when kept in memory only."""
        return self._path

    def job_data(self) -> dict[str, dict[str, Any]]:
        """The six settings for a TestApp ``next`` (6.1), as a fresh shallow dict.

        The inner dicts are shared and must not be mutated by the caller; they are
        replaced (never changed in place) when the settings change, so a dict handed
        out earlier keeps its values.
        """
        return dict(self._settings)

    def testoptions(self) -> list[dict[str, Any]]:
        """The settings as the web UI's ``usersettings`` list, in the order of NAMES."""
        return [
            {"name": name, "active": entry["active"], "value": entry["value"]}
            for name, entry in self._settings.items()
        ]

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """A deep copy ``{name: {"active", "value"}}`` (the file's content)."""
        return {name: dict(entry) for name, entry in self._settings.items()}

    # -- changing ----------------------------------------------------------------------

    def update(self, items: Iterable[Any]) -> None:
        """Apply a UI ``usersettings`` payload (8.3).

        Starts from the defaults, so an unlisted setting reverts to its default.  Every
        item is validated before anything changes; on the first problem SettingsError
        is raised and the settings are unchanged.  ``value`` 0 is kept; a missing or
        null ``value`` means -1; integer strings are accepted.  A name listed twice
        takes its last entry.  The result is saved.
        """
        if isinstance(items, (str, bytes, dict)) or not isinstance(items, (list, tuple)):
            raise SettingsError(
                f"usersettings payload must be a list of settings, got {type(items).__name__}"
            )
        new = default_settings()
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                raise SettingsError(
                    f"usersettings entry {index}: expected an object, got {type(item).__name__}"
                )
            name = item.get("name")
            if not isinstance(name, str) or name not in new:
                raise SettingsError(
                    f"usersettings entry {index}: unknown setting name {name!r} "
                    f"(known: {', '.join(NAMES)})"
                )
            new[name] = _parse_entry(name, item)
        self._replace(new)

    def reset_to_defaults(self) -> None:
        """Back to the defaults and save (done at every accepted load, 5.6)."""
        self._replace(default_settings())

    def _replace(self, new: dict[str, dict[str, Any]]) -> None:
        self._settings = new
        self._save()

    # -- persistence -------------------------------------------------------------------

    def _load(self) -> None:
        path = self._path
        assert path is not None
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            self.log.info("user settings file {path} not found; creating it", path=path)
            self._save()
            return
        except OSError as e:
            self.log.error(
                "cannot read user settings file {path}: {error}; using defaults",
                path=path, error=e,
            )
            return
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            self.log.error(
                "user settings file {path} is not valid JSON ({error}); using defaults, "
                "the file is kept until the settings next change",
                path=path, error=e,
            )
            return
        if not isinstance(data, dict):
            self.log.error(
                "user settings file {path} holds a JSON {kind}, not an object; using "
                "defaults, the file is kept until the settings next change",
                path=path, kind=type(data).__name__,
            )
            return
        merged = default_settings()
        for name, entry in data.items():
            if name not in merged:
                self.log.warn(
                    "user settings file {path}: unknown setting {name!r} dropped",
                    path=path, name=name,
                )
                continue
            try:
                merged[name] = _parse_entry(name, entry)
            except SettingsError as e:
                self.log.warn(
                    "user settings file {path}: {problem}; default used",
                    path=path, problem=str(e),
                )
        self._settings = merged
        self._save()

    def _save(self) -> None:
        """Write the settings atomically; log (never raise) on failure."""
        if self._path is None:
            return
        try:
            _atomic_write(self._path, _render(self._settings))
        except OSError as e:
            self.log.error(
                "cannot write user settings file {path}: {error}", path=self._path, error=e
            )


def _render(settings: dict[str, dict[str, Any]]) -> bytes:
    return (json.dumps(settings, indent=4, sort_keys=True) + "\n").encode("utf-8")


def _atomic_write(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new file."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp"
    )
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: str) -> None:
    """Make a rename durable; silently skipped where directories cannot be opened."""
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)
