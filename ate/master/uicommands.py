"""The web UI's and HTTP API's changes to the cell: user settings, the log level and the
bin map (protocol §11.5), each refused by the master machine where its state does not
allow it.  A mixin of :class:`ate.master.cell.Cell`, which provides the attributes below.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from ate.master.collaborators import CommandRefused, LevelSink
from ate.master.logs import LogBuffer
from ate.master.lot import Lot
from ate.master.settings import UserSettings
from ate.protocol import LOG_LEVELS
from ate.protocol import messages as m

if TYPE_CHECKING:
    from ate.master.machine import MasterMachine


class UiCommands:
    machine: MasterMachine
    settings: UserSettings
    loglevel: int
    logs: LogBuffer | None
    log_file: LevelSink | None
    lot: Lot | None
    sites: tuple[str, ...]
    _emit: Callable[[str, Any], None]
    _publish: Callable[[Any], Any]
    _send_loglevel: Callable[[], None]

    def update_settings(self, items: Any) -> None:
        """UI/API ``usersettings``; raises ``CommandRefused`` (the machine's refusal in
        this state) or ``SettingsError`` (a bad setting)."""
        refusal = self.machine.usersettings()
        if refusal is not None:
            raise CommandRefused(refusal)
        self.settings.update(items)
        self._emit("usersettings", self.usersettings())

    def set_loglevel(self, level: Any) -> None:
        if isinstance(level, bool) or level not in LOG_LEVELS:
            raise ValueError(f"setloglevel refused: level {level!r} is not one of 10, 20, 30, 40")
        self.loglevel = level
        if self.logs is not None:
            self.logs.set_level(level)
        if self.log_file is not None:
            self.log_file.set_level(level)
        self._send_loglevel()
        self._emit("usersettings", self.usersettings())

    def bin_map(self, sbin: Any, hbin: Any) -> None:
        """UI ``bin_map``; raises ``CommandRefused`` outside ready, ValueError for bad bins."""
        refusal = self.machine.bin_map()
        if refusal is not None:
            raise CommandRefused(refusal)
        if self.lot is None:
            raise ValueError("binMap refused: no lot is loaded")
        for name, v in (("sBin", sbin), ("hBin", hbin)):
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 65535:
                raise ValueError(f"binMap refused: {name} {v!r} is not an integer 0..65535")
        try:
            self.lot.set_hbin(sbin, hbin)
        except (KeyError, ValueError) as e:
            raise ValueError(f"binMap refused: {e}") from None
        self._publish(m.TestAppSetHBin(sites=self.sites, sbin=str(sbin), hbin=str(hbin)))
        self._emit("bintable", self.lot.bintable())

    def usersettings(self) -> dict:
        return {"testoptions": self.settings.testoptions(), "loglevel": self.loglevel}

