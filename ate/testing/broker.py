"""The private broker helper now lives in :mod:`ate.broker`.

This old import path stays working: it is the same module object (``ate.testing.broker is
ate.broker``), so a name looked up or patched through either path is the same name.
"""

import sys

from ate import broker as _broker

sys.modules[__name__] = _broker
