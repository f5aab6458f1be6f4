"""Run the checkout's ``twistd`` programs as real processes, for tests.

``TWISTD`` is the command line of twistd with this checkout first on the path, also for
the twistd plugins (``twisted/plugins/ate_plugins.py``): an older installed copy of the
package would otherwise provide the plugin list.
"""

from __future__ import annotations

import os
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))

_BOOT = (
    "import sys, twisted.plugins as p; "
    f"p.__path__.insert(0, {os.path.join(ROOT, 'twisted', 'plugins')!r}); "
    "from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
)

#: ``twistd`` of this checkout: ``subprocess.run(TWISTD + ["-n", "ate-master", ...])``
TWISTD = [sys.executable, "-c", _BOOT]


def env(**extra: str) -> dict:
    """The environment for a twistd process: this checkout first on PYTHONPATH."""
    e = dict(os.environ)
    e["PYTHONPATH"] = ROOT + os.pathsep + e.get("PYTHONPATH", "")
    e.update(extra)
    return e
