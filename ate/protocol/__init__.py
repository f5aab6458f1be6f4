"""The MQTT wire contract (protocol.md) as pure Python: topic names, typed
messages and the :class:`Codec` that decodes and encodes them.

No Twisted imports here or below.
"""

from ate.protocol.errors import ProtocolError
from ate.protocol.levels import LOG_LEVEL_NAMES, LOG_LEVELS
from ate.protocol.messages import *  # noqa: F401,F403  (re-exported API)
from ate.protocol.messages import __all__ as _messages_all
from ate.protocol.topics import RESERVED_APPS, SUBSCRIBE_QOS, Topics

__all__ = ["ProtocolError", "Topics", "SUBSCRIBE_QOS", "RESERVED_APPS", "LOG_LEVELS",
           "LOG_LEVEL_NAMES", *_messages_all]
