"""Configuration files of ate-master, ate-handler and the simulated sites.

Pure module: no Twisted.  Every loader reads JSON (the reference's format, accepted
unchanged) or TOML (by the suffix ``.toml``) with the same key names, validates every key
and returns a frozen dataclass.  Any problem raises :class:`ConfigError`, whose ``str()`` is
one line naming the file, the key and the problem.  Things that are accepted but doubtful
(unknown keys, an unusual site list, ``jobsource = "static"``) are collected as text in the
``warnings`` field, for the caller to log.

Relative paths are kept as written and, as in the reference, are relative to the working
directory of the process.  See protocol.md section 12 and docs/internals.md.
"""


from ate.config.common import (
    DEFAULT_WEBUI_ROOT,
    HANDLER_TYPES,
    JOB_FORMATS,
    JOB_SOURCES,
    SERIAL_PARITIES,
    ConfigError,
    MqttOptions,
    mqtt_options_from_dict,
    parse_sites,
)
from ate.config.handler import (
    HandlerConfig,
    HandlerTimeouts,
    handler_config_from_dict,
    load_handler_config,
)
from ate.config.master import MasterConfig, Timeouts, load_master_config, master_config_from_dict
from ate.config.sim import (
    DEFAULT_SIM_BINS,
    SIM_DEFAULTS,
    SimBin,
    SimConfig,
    SimDefaults,
    SimFaults,
    load_sim_config,
    sim_config_from_dict,
)

__all__ = [
    "ConfigError",
    "Timeouts",
    "HandlerTimeouts",
    "MqttOptions",
    "MasterConfig",
    "HandlerConfig",
    "SimBin",
    "SimFaults",
    "SimConfig",
    "DEFAULT_WEBUI_ROOT",
    "HANDLER_TYPES",
    "JOB_FORMATS",
    "JOB_SOURCES",
    "SERIAL_PARITIES",
    "DEFAULT_SIM_BINS",
    "SIM_DEFAULTS",
    "SimDefaults",
    "load_master_config",
    "master_config_from_dict",
    "load_handler_config",
    "handler_config_from_dict",
    "load_sim_config",
    "sim_config_from_dict",
    "mqtt_options_from_dict",
    "parse_sites",
]

