"""Tests for ate.config: loading, defaults, validation and overrides."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from ate.config import (
    DEFAULT_SIM_BINS,
    DEFAULT_WEBUI_ROOT,
    ConfigError,
    HandlerTimeouts,
    MqttOptions,
    SimBin,
    SimFaults,
    Timeouts,
    handler_config_from_dict,
    load_handler_config,
    load_master_config,
    load_sim_config,
    master_config_from_dict,
    mqtt_options_from_dict,
    parse_sites,
    sim_config_from_dict,
)

REPO = Path(__file__).resolve().parents[2]
ETC = REPO / "etc"
FIXTURES = REPO / "tests" / "fixtures" / "config"  # reference-format examples (protocol.md 12)
MASTER_FIXTURE = FIXTURES / "master_config_file.json"
HANDLER_FIXTURE = FIXTURES / "handler_config_file.json"

DELETE = object()

MASTER_TOML = """\
broker_host = "127.0.0.1"
broker_port = 1883
device_id = "SCT-81-1F"
sites = ["0", "1", "2", "3"]
Handler = "HTO92-20F"
environment = "F1"
webui_host = "127.0.0.1"
webui_port = 8081
webui_root_path = "./webui"
jobsource = "filesystem"
jobformat = "xml.semi-ate"
skip_jobdata_verification = false
filesystemdatasource_path = "./jobs"
filesystemdatasource_jobpattern = "le#jobname#.xml"
enable_timeouts = true
user_settings_filepath = "master_user_settings.json"
site_layout = [[0, 0], [1, 0], [0, 1], [1, 1]]
tester_type = "Semi_ATE Master Parallel Tester"
loglevel = 20
develop_mode = false
"""


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with ./webui, as the fixture's webui_root_path expects."""
    (tmp_path / "webui").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def master_data(**changes: Any) -> dict[str, Any]:
    """The fixture's data with some keys changed (value DELETE removes the key)."""
    data = json.loads(MASTER_FIXTURE.read_text())
    for key, value in changes.items():
        if value is DELETE:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def handler_data(**changes: Any) -> dict[str, Any]:
    data = json.loads(HANDLER_FIXTURE.read_text())
    for key, value in changes.items():
        if value is DELETE:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def sim_data(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"device_id": "SCT-81-1F", "sites": ["0", "1", "2", "3"]}
    for key, value in changes.items():
        if value is DELETE:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def assert_one_line_error(err: ConfigError, file: str, key: str, fragment: str) -> None:
    text = str(err)
    assert "\n" not in text
    assert text == f"{err.file}: {err.key}: {err.problem}"
    assert err.file == file
    assert err.key == key
    assert fragment in err.problem


# --------------------------------------------------------------------------------------
# ate-master: loading


def test_fixture_loads(workdir: Path) -> None:
    cfg = load_master_config(str(MASTER_FIXTURE))
    assert cfg.path == str(MASTER_FIXTURE)
    assert cfg.device_id == "SCT-81-1F"
    assert cfg.sites == ("0", "1", "2", "3")
    assert cfg.handler_id == "HTO92-20F"
    assert cfg.environment == "F1"
    assert (cfg.webui_host, cfg.webui_port, cfg.webui_root_path) == ("127.0.0.1", 8081, "./webui")
    assert cfg.webui_token is None
    assert (cfg.jobsource, cfg.jobformat) == ("filesystem", "xml.semi-ate")
    assert cfg.filesystemdatasource_path == "./jobs"
    assert cfg.filesystemdatasource_jobpattern == "le#jobname#.xml"
    assert cfg.skip_jobdata_verification is False
    assert cfg.enable_timeouts is True
    assert cfg.user_settings_filepath == "master_user_settings.json"
    assert cfg.site_layout == ((0, 0), (1, 0), (0, 1), (1, 1))
    assert cfg.tester_type == "Semi_ATE Master Parallel Tester"
    assert cfg.loglevel == 20
    assert cfg.mqtt == MqttOptions(host="127.0.0.1", port=1883)
    # ate-master-only keys take their defaults
    assert cfg.stdf_directory == "."
    assert cfg.log_directory == "log"
    assert cfg.stdf_fsync_interval == 0.2
    assert cfg.timeouts == Timeouts()
    assert cfg.peripherals == ()
    assert cfg.warnings == ()


def test_toml_equivalent_is_equal(workdir: Path) -> None:
    toml_path = workdir / "master.toml"
    toml_path.write_text(MASTER_TOML)
    from_json = load_master_config(str(MASTER_FIXTURE))
    from_toml = load_master_config(str(toml_path))
    assert from_toml.path == str(toml_path)
    assert replace(from_toml, path="x") == replace(from_json, path="x")


def test_accepts_pathlike(workdir: Path) -> None:
    assert load_master_config(MASTER_FIXTURE).device_id == "SCT-81-1F"


def test_defaults_of_optional_keys() -> None:
    data = {
        "device_id": "D1",
        "sites": ["0", "1", "2"],
        "Handler": "H1",
        "jobsource": "filesystem",
        "jobformat": "xml.semi-ate",
        "filesystemdatasource_path": "jobs",
        "filesystemdatasource_jobpattern": "#jobname#.xml",
    }
    cfg = master_config_from_dict(data)
    assert cfg.path == "<dict>"
    assert cfg.mqtt == MqttOptions(host="localhost", port=1883, keepalive=60)
    assert cfg.environment == ""
    assert (cfg.webui_host, cfg.webui_port) == ("127.0.0.1", 8081)
    assert cfg.webui_root_path == DEFAULT_WEBUI_ROOT
    assert DEFAULT_WEBUI_ROOT.endswith(os.path.join("ate", "web", "static"))
    assert cfg.enable_timeouts is True
    assert cfg.site_layout == ((0, 0), (1, 0), (2, 0))
    assert cfg.loglevel == 30
    assert cfg.user_settings_filepath is None
    assert cfg.tester_type is None
    assert cfg.skip_jobdata_verification is False
    assert cfg.webui_token is None
    assert cfg.warnings == ()


def test_ate_master_keys_and_timeout_merge(workdir: Path) -> None:
    cfg = master_config_from_dict(
        master_data(
            stdf_directory="stdf",
            log_directory="logs",
            stdf_fsync_interval=0,
            timeouts={"load": 20, "test": 2.5},
            peripherals=["Temperature"],
            webui_token="t0k",
            enable_timeouts=0,
            mqtt_username="u",
            mqtt_password="p",
            mqtt_tls=True,
            mqtt_tls_ca="ca.pem",
            mqtt_keepalive=15,
        )
    )
    assert cfg.stdf_directory == "stdf"
    assert cfg.log_directory == "logs"
    assert cfg.stdf_fsync_interval == 0.0
    assert cfg.timeouts == Timeouts(load=20.0, test=2.5)
    assert isinstance(cfg.timeouts.load, float)
    assert cfg.peripherals == ("Temperature",)
    assert cfg.webui_token == "t0k"
    assert cfg.enable_timeouts is False
    assert cfg.mqtt == MqttOptions(
        host="127.0.0.1",
        port=1883,
        username="u",
        password="p",
        tls=True,
        tls_ca="ca.pem",
        keepalive=15,
    )
    assert cfg.warnings == ()


def test_enable_timeouts_nonzero_int_is_true(workdir: Path) -> None:
    assert master_config_from_dict(master_data(enable_timeouts=1)).enable_timeouts is True


def test_static_jobsource_is_accepted_with_warning(workdir: Path) -> None:
    data = master_data(
        jobsource="static", filesystemdatasource_path=DELETE, filesystemdatasource_jobpattern=DELETE
    )
    cfg = master_config_from_dict(data)
    assert cfg.jobsource == "static"
    assert cfg.filesystemdatasource_path == ""
    assert any("jobsource" in w and "static" in w for w in cfg.warnings)


def test_unknown_key_gives_warning_not_error(workdir: Path) -> None:
    cfg = master_config_from_dict(master_data(colour="blue"), source="m.json")
    assert cfg.warnings == ("m.json: colour: unknown key, ignored",)


def test_duplicate_json_key_gives_warning(workdir: Path) -> None:
    path = workdir / "dup.json"
    text = MASTER_FIXTURE.read_text().replace('"loglevel": 20', '"loglevel": 10, "loglevel": 20')
    path.write_text(text)
    cfg = load_master_config(str(path))
    assert cfg.loglevel == 20
    assert any("loglevel" in w and "twice" in w for w in cfg.warnings)


@pytest.mark.parametrize("sites", [["1", "0"], ["0", "2"], ["5"]])
def test_unusual_site_list_gives_warning(workdir: Path, sites: list[str]) -> None:
    cfg = master_config_from_dict(master_data(sites=sites, site_layout=DELETE))
    assert cfg.sites == tuple(sites)
    assert len(cfg.warnings) == 1 and "sites" in cfg.warnings[0]


def test_short_site_layout_gives_warning(workdir: Path) -> None:
    cfg = master_config_from_dict(master_data(site_layout=[[0, 0]]))
    assert cfg.site_layout == ((0, 0),)
    assert any("site_layout" in w for w in cfg.warnings)


def test_tls_files_without_tls_give_warning(workdir: Path) -> None:
    cfg = master_config_from_dict(master_data(mqtt_tls_ca="ca.pem"))
    assert any("mqtt_tls_ca" in w for w in cfg.warnings)


# --------------------------------------------------------------------------------------
# ate-master: errors


MASTER_ERRORS = [
    # missing required keys
    ({"device_id": DELETE}, "device_id", "missing"),
    ({"sites": DELETE}, "sites", "missing"),
    ({"Handler": DELETE}, "Handler", "missing"),
    ({"jobsource": DELETE}, "jobsource", "missing"),
    ({"jobformat": DELETE}, "jobformat", "missing"),
    ({"filesystemdatasource_path": DELETE}, "filesystemdatasource_path", "missing"),
    ({"filesystemdatasource_jobpattern": DELETE}, "filesystemdatasource_jobpattern", "missing"),
    # wrong types
    ({"device_id": 42}, "device_id", "string"),
    ({"device_id": ""}, "device_id", "empty"),
    ({"device_id": "a/b"}, "device_id", "'/'"),
    ({"Handler": None}, "Handler", "null"),
    ({"broker_host": 1}, "broker_host", "string"),
    ({"broker_port": "1883"}, "broker_port", "integer"),
    ({"broker_port": True}, "broker_port", "integer"),
    ({"webui_port": 8081.0}, "webui_port", "integer"),
    ({"webui_port": False}, "webui_port", "integer"),
    ({"loglevel": True}, "loglevel", "integer"),
    ({"loglevel": "20"}, "loglevel", "integer"),
    ({"environment": 1}, "environment", "string"),
    ({"webui_host": []}, "webui_host", "string"),
    ({"skip_jobdata_verification": 0}, "skip_jobdata_verification", "true or false"),
    ({"enable_timeouts": "yes"}, "enable_timeouts", "true, false or an integer"),
    ({"user_settings_filepath": 3}, "user_settings_filepath", "string"),
    ({"tester_type": 3}, "tester_type", "string"),
    ({"stdf_directory": 3}, "stdf_directory", "string"),
    ({"log_directory": None}, "log_directory", "string"),
    ({"stdf_fsync_interval": "0.2"}, "stdf_fsync_interval", "number"),
    ({"stdf_fsync_interval": -1}, "stdf_fsync_interval", "negative"),
    ({"peripherals": "Temperature"}, "peripherals", "list"),
    ({"peripherals": [1]}, "peripherals[0]", "string"),
    ({"peripherals": ["T", "T"]}, "peripherals", "twice"),
    ({"webui_token": 123}, "webui_token", "string"),
    ({"webui_token": ""}, "webui_token", "empty"),
    # job source and format
    ({"jobsource": "database"}, "jobsource", "database"),
    ({"jobformat": "xml"}, "jobformat", "xml.semi-ate"),
    # sites
    ({"sites": []}, "sites", "at least one"),
    ({"sites": "0,1"}, "sites", "list"),
    ({"sites": ["0", "0"]}, "sites", "twice"),
    ({"sites": ["0", "a"]}, "sites[1]", "decimal integer"),
    ({"sites": ["0", ""]}, "sites[1]", "decimal integer"),
    ({"sites": ["-1"]}, "sites[0]", "decimal integer"),
    ({"sites": ["01"]}, "sites[0]", "leading zeros"),
    ({"sites": ["256"]}, "sites[0]", "0..255"),
    ({"sites": [0, 1]}, "sites[0]", "strings"),
    # ports and log level
    ({"broker_port": 0}, "broker_port", "between 1 and 65535"),
    ({"broker_port": 65536}, "broker_port", "between 1 and 65535"),
    ({"webui_port": -5}, "webui_port", "between 1 and 65535"),
    ({"loglevel": 25}, "loglevel", "10, 20, 30, 40"),
    # timeouts
    ({"timeouts": {"load": 0}}, "timeouts.load", "greater than 0"),
    ({"timeouts": {"test": -3}}, "timeouts.test", "greater than 0"),
    ({"timeouts": {"test": "30"}}, "timeouts.test", "number"),
    ({"timeouts": {"test": True}}, "timeouts.test", "number"),
    ({"timeouts": {"test": float("inf")}}, "timeouts.test", "finite"),
    ({"timeouts": {"lod": 5}}, "timeouts.lod", "unknown"),
    ({"timeouts": [5]}, "timeouts", "object"),
    # site layout
    ({"site_layout": [[0, 0]] * 5}, "site_layout", "5 positions"),
    ({"site_layout": [[0]]}, "site_layout[0]", "[x, y]"),
    ({"site_layout": [[0, -1]]}, "site_layout[0]", "non-negative"),
    ({"site_layout": [[0, 1.5]]}, "site_layout[0]", "non-negative integer"),
    ({"site_layout": [[True, 0]]}, "site_layout[0]", "non-negative integer"),
    ({"site_layout": {"0": [0, 0]}}, "site_layout", "list"),
    # develop mode
    ({"develop_mode": True}, "develop_mode", "develop_mode is not supported"),
    ({"develop_mode": "no"}, "develop_mode", "true or false"),
    # web root
    ({"webui_root_path": "./missing"}, "webui_root_path", "does not exist"),
    ({"webui_root_path": 5}, "webui_root_path", "string"),
    # mqtt keys
    ({"mqtt_username": 5}, "mqtt_username", "string"),
    ({"mqtt_password": 5}, "mqtt_password", "string"),
    ({"mqtt_password": "p"}, "mqtt_password", "mqtt_username"),
    ({"mqtt_tls": "yes"}, "mqtt_tls", "true or false"),
    ({"mqtt_tls_ca": []}, "mqtt_tls_ca", "string"),
    ({"mqtt_tls_cert": 1}, "mqtt_tls_cert", "string"),
    ({"mqtt_tls": True, "mqtt_tls_key": "k.pem"}, "mqtt_tls_key", "mqtt_tls_cert"),
    ({"mqtt_tls_insecure": 1}, "mqtt_tls_insecure", "true or false"),
    ({"mqtt_keepalive": "60"}, "mqtt_keepalive", "integer"),
    ({"mqtt_keepalive": -1}, "mqtt_keepalive", "between 0 and 65535"),
]


@pytest.mark.parametrize(("changes", "key", "fragment"), MASTER_ERRORS)
def test_master_errors(workdir: Path, changes: dict[str, Any], key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        master_config_from_dict(master_data(**changes), source="master.json")
    assert_one_line_error(info.value, "master.json", key, fragment)


@pytest.mark.parametrize(("changes", "key", "fragment"), MASTER_ERRORS[:12])
def test_master_errors_from_file(
    workdir: Path, changes: dict[str, Any], key: str, fragment: str
) -> None:
    path = workdir / "master.json"
    path.write_text(json.dumps(master_data(**changes)))
    with pytest.raises(ConfigError) as info:
        load_master_config(str(path))
    assert_one_line_error(info.value, str(path), key, fragment)


def test_web_root_that_is_a_file_is_refused(workdir: Path) -> None:
    (workdir / "afile").write_text("")
    with pytest.raises(ConfigError) as info:
        master_config_from_dict(master_data(webui_root_path="afile"))
    assert info.value.key == "webui_root_path"


# --------------------------------------------------------------------------------------
# Files that cannot be read or parsed


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [
        ("bad.json", b'{\n  "device_id": "x",\n  "sites": [\n}', "line 4"),
        ("bad.json", b"", "invalid JSON"),
        # beyond Python's integer digit limit: json raises a plain ValueError there
        ("big.json", b'{"device_id": ' + b"1" * 5000 + b"}", "invalid JSON: Exceeds the limit"),
        ("big.toml", b"device_id = " + b"1" * 5000 + b"\n", "invalid TOML: Exceeds the limit"),
        ("list.json", b"[1, 2]", "must be an object, got a list"),
        ("null.json", b"null", "must be an object, got null"),
        ("bad.toml", b'device_id = "x"\nsites = \n', "line 2"),
        ("dup.toml", b'a = 1\na = 2\n', "invalid TOML"),
        ("latin1.json", b'{"device_id": "\xe9"}', "UTF-8"),
    ],
)
def test_unparseable_files(workdir: Path, name: str, content: bytes, fragment: str) -> None:
    path = workdir / name
    path.write_bytes(content)
    for loader in (load_master_config, load_handler_config, load_sim_config):
        with pytest.raises(ConfigError) as info:
            loader(str(path))
        assert_one_line_error(info.value, str(path), "-", fragment)


def test_missing_file(workdir: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_master_config("nope.json")
    assert_one_line_error(info.value, "nope.json", "-", "cannot read")


def test_directory_instead_of_file(workdir: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_master_config("webui")
    assert_one_line_error(info.value, "webui", "-", "cannot read")


def test_json_bom_is_accepted(workdir: Path) -> None:
    path = workdir / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + MASTER_FIXTURE.read_bytes())
    assert load_master_config(str(path)).device_id == "SCT-81-1F"


def test_non_object_dict_input() -> None:
    with pytest.raises(ConfigError) as info:
        master_config_from_dict(["a"], source="x")  # type: ignore[arg-type]
    assert_one_line_error(info.value, "x", "-", "object")


def test_error_problem_is_forced_to_one_line() -> None:
    err = ConfigError("f", "k", "first\nsecond")
    assert str(err) == "f: k: first second"


# --------------------------------------------------------------------------------------
# Command-line overrides


def test_overrides_replace_file_values(workdir: Path) -> None:
    cfg = load_master_config(
        str(MASTER_FIXTURE),
        device_id="SCT-9",
        sites="0, 1",
        broker_host="broker",
        broker_port="1884",
    )
    assert cfg.device_id == "SCT-9"
    assert cfg.sites == ("0", "1")
    assert cfg.mqtt.host == "broker"
    assert cfg.mqtt.port == 1884


def test_sites_override_as_list(workdir: Path) -> None:
    cfg = master_config_from_dict(master_data(site_layout=DELETE), sites=["0", "1", "2"])
    assert cfg.sites == ("0", "1", "2")
    assert cfg.site_layout == ((0, 0), (1, 0), (2, 0))


def test_overrides_supply_missing_keys(workdir: Path) -> None:
    data = master_data(device_id=DELETE, sites=DELETE, site_layout=DELETE)
    cfg = master_config_from_dict(data, device_id="D", sites="0")
    assert (cfg.device_id, cfg.sites) == ("D", ("0",))


def test_site_layout_is_cut_to_overridden_sites(workdir: Path) -> None:
    cfg = master_config_from_dict(master_data(), sites="0,1")
    assert cfg.site_layout == ((0, 0), (1, 0))
    assert any("site_layout" in w and "command line" in w for w in cfg.warnings)


def test_overrides_replace_file_values_without_warnings(workdir: Path) -> None:
    cfg = load_master_config(str(MASTER_FIXTURE), sites="0,1,2,3", device_id="D")
    assert cfg.warnings == ()


@pytest.mark.parametrize(
    ("overrides", "key", "fragment"),
    [
        ({"device_id": ""}, "device_id", "empty"),
        ({"device_id": "a#b"}, "device_id", "'#'"),
        ({"sites": ""}, "sites", "at least one"),
        ({"sites": "0,,1"}, "sites[1]", "decimal integer"),
        ({"sites": "0,x"}, "sites[1]", "decimal integer"),
        ({"sites": "1,1"}, "sites", "twice"),
        ({"sites": 3}, "sites", "list"),
        ({"broker_host": ""}, "broker_host", "empty"),
        ({"broker_port": 0}, "broker_port", "between 1 and 65535"),
        ({"broker_port": "http"}, "broker_port", "integer"),
        ({"broker_port": "70000"}, "broker_port", "between 1 and 65535"),
    ],
)
def test_bad_overrides(workdir: Path, overrides: dict[str, Any], key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_master_config(str(MASTER_FIXTURE), **overrides)
    assert_one_line_error(info.value, str(MASTER_FIXTURE), key, fragment)


def test_parse_sites_helper() -> None:
    assert parse_sites("0,1,2") == ("0", "1", "2")
    assert parse_sites(["3"]) == ("3",)
    with pytest.raises(ConfigError) as info:
        parse_sites("0,a")
    assert info.value.key == "sites[1]"


# --------------------------------------------------------------------------------------
# MQTT options helper


def test_mqtt_options_from_dict() -> None:
    assert mqtt_options_from_dict({}) == MqttOptions()
    opts = mqtt_options_from_dict(
        {
            "broker_host": "h",
            "broker_port": 8883,
            "mqtt_tls": True,
            "mqtt_tls_insecure": True,
            "other": 1,
        },
        broker_port=1884,
    )
    assert opts == MqttOptions(host="h", port=1884, tls=True, tls_insecure=True)
    with pytest.raises(ConfigError) as info:
        mqtt_options_from_dict({"mqtt_keepalive": 1.5}, source="s")
    assert_one_line_error(info.value, "s", "mqtt_keepalive", "integer")


# --------------------------------------------------------------------------------------
# Example files in etc/


def test_etc_master_toml_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no ./webui: the TOML example uses the shipped UI
    cfg = load_master_config(str(ETC / "master.toml"))
    assert cfg.warnings == ()
    assert cfg.webui_root_path == DEFAULT_WEBUI_ROOT
    assert cfg.timeouts == Timeouts()
    assert cfg.sites == ("0", "1", "2", "3")


def test_etc_master_json_mirrors_fixture(workdir: Path) -> None:
    """etc/master.json is the reference's file, without its web root "./webui" (which a
    checkout does not have: the shipped UI is the default) and with the datalog and log
    directories of etc/master.toml."""
    shipped = json.loads((ETC / "master.json").read_text())
    reference = json.loads(MASTER_FIXTURE.read_text())
    del reference["webui_root_path"]
    # plus the example alarm rules of etc/master.toml (ate-master's own key, protocol.md 15)
    reference.update(stdf_directory="datalogs", log_directory="log",
                     alarms=[{"kind": "consecutive_fails", "count": 10, "action": "hold"},
                             {"kind": "site_divergence", "z": 5.0, "min_parts": 200}])
    assert shipped == reference
    from_etc_json = load_master_config(str(ETC / "master.json"))
    from_etc_toml = load_master_config(str(ETC / "master.toml"))
    assert [r.kind for r in from_etc_toml.alarms] == ["consecutive_fails", "site_divergence"]
    assert replace(from_etc_toml, path="x") == replace(from_etc_json, path="x")


def test_etc_handler_toml_loads() -> None:
    cfg = load_handler_config(str(ETC / "handler.toml"))
    assert cfg.warnings == ()
    assert cfg.handler_id == "HTO92-20F"
    assert cfg.timeouts == HandlerTimeouts()
    fixture = load_handler_config(str(HANDLER_FIXTURE))
    # the reference's file plus the serial port in the config (the reference takes it
    # from the command line only)
    assert replace(cfg, path="x") == replace(fixture, path="x", serial_port="/dev/ttyUSB0")


def test_etc_sim_sites_toml_loads() -> None:
    cfg = load_sim_config(str(ETC / "sim-sites.toml"))
    assert cfg.warnings == ()
    assert cfg.bins == DEFAULT_SIM_BINS
    assert cfg.faults == SimFaults(fault_site="0")
    assert replace(cfg, path="x") == replace(
        sim_config_from_dict(sim_data(broker_host="127.0.0.1")), path="x"
    )


# --------------------------------------------------------------------------------------
# ate-handler


def test_handler_fixture_loads() -> None:
    cfg = load_handler_config(str(HANDLER_FIXTURE))
    assert cfg.path == str(HANDLER_FIXTURE)
    assert cfg.broker == MqttOptions(host="127.0.0.1", port=1883)
    assert cfg.handler_type == "geringer"
    assert cfg.handler_id == "HTO92-20F"
    assert cfg.device_ids == ("SCT-81-1F",)
    assert cfg.site_layout == ((0, 0), (1, 0), (0, 1), (1, 1))
    assert cfg.loglevel == 20
    assert (cfg.serial, cfg.listen, cfg.site_map) == (None, None, None)
    assert cfg.timeouts == HandlerTimeouts(load=200, next=40, unload=70, startup=300, ready=15)
    assert cfg.warnings == ()


def test_handler_extras() -> None:
    cfg = handler_config_from_dict(
        handler_data(
            handler_type="simulated",
            device_ids=["A", "B"],
            serial="tcp:127.0.0.1:5000",
            listen="tcp:5000:interface=127.0.0.1",
            site_map=[["A", "0"], ["A", "1"], ["B", "0"]],
            timeouts={"next": 4},
            loglevel=DELETE,
        )
    )
    assert cfg.handler_type == "simulated"
    assert cfg.device_ids == ("A", "B")
    assert cfg.serial == "tcp:127.0.0.1:5000"
    assert cfg.listen == "tcp:5000:interface=127.0.0.1"
    assert cfg.site_map == (("A", "0"), ("A", "1"), ("B", "0"))
    assert cfg.timeouts == HandlerTimeouts(next=4.0)
    assert cfg.loglevel == 30
    assert cfg.warnings == ()


def test_handler_several_devices_without_site_map_warns() -> None:
    cfg = handler_config_from_dict(handler_data(device_ids=["A", "B"]))
    assert any("site_map" in w for w in cfg.warnings)


def test_handler_broker_overrides() -> None:
    data = handler_data(broker_host=DELETE, broker_port=DELETE)
    cfg = handler_config_from_dict(data, broker_host="h", broker_port=1885)
    assert (cfg.broker.host, cfg.broker.port) == ("h", 1885)


def test_handler_unknown_key_warns() -> None:
    cfg = handler_config_from_dict(handler_data(baud=9600), source="h.json")
    assert cfg.warnings == ("h.json: baud: unknown key, ignored",)


HANDLER_ERRORS = [
    ({"broker_host": DELETE}, "broker_host", "missing"),
    ({"broker_port": DELETE}, "broker_port", "missing"),
    ({"broker_port": 0}, "broker_port", "between 1 and 65535"),
    ({"handler_type": DELETE}, "handler_type", "missing"),
    ({"handler_type": "cohu"}, "handler_type", "geringer, simulated"),
    ({"handler_id": DELETE}, "handler_id", "missing"),
    ({"handler_id": 7}, "handler_id", "string"),
    ({"device_ids": DELETE}, "device_ids", "missing"),
    ({"device_ids": []}, "device_ids", "at least one"),
    ({"device_ids": "SCT"}, "device_ids", "list"),
    ({"device_ids": ["A", "A"]}, "device_ids", "twice"),
    ({"device_ids": ["A/B"]}, "device_ids[0]", "'/'"),
    ({"site_layout": DELETE}, "site_layout", "missing"),
    ({"site_layout": [[0, 0, 0]]}, "site_layout[0]", "[x, y]"),
    ({"loglevel": 15}, "loglevel", "10, 20, 30, 40"),
    ({"serial": "COM1"}, "serial", "endpoint"),
    ({"serial": 5000}, "serial", "string"),
    ({"listen": ""}, "listen", "empty"),
    ({"site_map": []}, "site_map", "at least one"),
    ({"site_map": {"0": "A"}}, "site_map", "list"),
    ({"site_map": [["SCT-81-1F"]]}, "site_map[0]", "[device_id, site_id]"),
    ({"site_map": [["OTHER", "0"]]}, "site_map[0]", "not in device_ids"),
    ({"site_map": [["SCT-81-1F", 0]]}, "site_map[0]", "strings"),
    ({"site_map": [["SCT-81-1F", "0"], ["SCT-81-1F", "0"]]}, "site_map[1]", "twice"),
    ({"timeouts": {"ready": 0}}, "timeouts.ready", "greater than 0"),
    ({"timeouts": {"next_ack": 5}}, "timeouts.next_ack", "unknown"),
    ({"mqtt_keepalive": True}, "mqtt_keepalive", "integer"),
]


@pytest.mark.parametrize(("changes", "key", "fragment"), HANDLER_ERRORS)
def test_handler_errors(changes: dict[str, Any], key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        handler_config_from_dict(handler_data(**changes), source="handler.json")
    assert_one_line_error(info.value, "handler.json", key, fragment)


# --------------------------------------------------------------------------------------
# Simulated sites


def test_sim_defaults() -> None:
    cfg = sim_config_from_dict(sim_data())
    assert cfg.broker == MqttOptions()
    assert cfg.device_id == "SCT-81-1F"
    assert cfg.sites == ("0", "1", "2", "3")
    assert (cfg.test_time, cfg.load_time, cfg.ptr_count, cfg.seed) == (0.0, 0.0, 5, 1)
    assert cfg.bins == (
        SimBin(1, 1, 80),
        SimBin(2, 2, 5),
        SimBin(12, 5, 5),
        SimBin(13, 5, 3),
        SimBin(20, 6, 4),
        SimBin(21, 6, 3),
    )
    assert cfg.faults == SimFaults(fault_site="0")
    assert cfg.faults.crash_on_part is None
    assert cfg.warnings == ()


def test_sim_values_and_faults() -> None:
    cfg = sim_config_from_dict(
        sim_data(
            test_time=0.5,
            load_time=2,
            ptr_count=0,
            seed=-7,
            bins=[{"sbin": 1, "hbin": 1, "weight": 1}, {"sbin": 60000, "hbin": 0, "weight": 0}],
            faults={
                "crash_on_part": 3,
                "drop_result_on_part": 4,
                "wrong_site_on_part": 5,
                "duplicate_result_on_part": 6,
                "slow_load": 1.5,
                "fault_site": "2",
            },
        )
    )
    assert (cfg.test_time, cfg.load_time, cfg.ptr_count, cfg.seed) == (0.5, 2.0, 0, -7)
    assert cfg.bins == (SimBin(1, 1, 1.0), SimBin(60000, 0, 0.0))
    assert cfg.faults == SimFaults(3, 4, 5, 6, 1.5, "2")


def test_sim_fault_site_defaults_to_first_site() -> None:
    assert sim_config_from_dict(sim_data(sites=["4", "5"])).faults.fault_site == "4"


def test_sim_overrides() -> None:
    cfg = sim_config_from_dict(
        sim_data(device_id=DELETE), device_id="X", sites="0,1", broker_host="b", broker_port=2000
    )
    assert (cfg.device_id, cfg.sites) == ("X", ("0", "1"))
    assert (cfg.broker.host, cfg.broker.port) == ("b", 2000)


def test_sim_unknown_key_warns() -> None:
    cfg = sim_config_from_dict(sim_data(speed=3), source="s")
    assert cfg.warnings == ("s: speed: unknown key, ignored",)


SIM_ERRORS = [
    ({"device_id": DELETE}, "device_id", "missing"),
    ({"sites": DELETE}, "sites", "missing"),
    ({"sites": ["x"]}, "sites[0]", "decimal integer"),
    ({"test_time": -1}, "test_time", "negative"),
    ({"test_time": "1"}, "test_time", "number"),
    ({"load_time": float("nan")}, "load_time", "finite"),
    ({"ptr_count": -1}, "ptr_count", "at least 0"),
    ({"ptr_count": 2.0}, "ptr_count", "integer"),
    ({"seed": "1"}, "seed", "integer"),
    ({"bins": []}, "bins", "at least one"),
    ({"bins": {"sbin": 1}}, "bins", "list"),
    ({"bins": [[1, 1, 1]]}, "bins[0]", "object"),
    ({"bins": [{"sbin": 1, "hbin": 1}]}, "bins[0].weight", "missing"),
    ({"bins": [{"sbin": 1, "hbin": 1, "weight": 1, "name": "x"}]}, "bins[0].name", "unknown"),
    ({"bins": [{"sbin": -1, "hbin": 1, "weight": 1}]}, "bins[0].sbin", "between 0 and 65535"),
    ({"bins": [{"sbin": 1, "hbin": "1", "weight": 1}]}, "bins[0].hbin", "integer"),
    ({"bins": [{"sbin": 1, "hbin": 1, "weight": -2}]}, "bins[0].weight", "negative"),
    ({"bins": [{"sbin": 1, "hbin": 1, "weight": 0}]}, "bins", "greater than 0"),
    ({"faults": []}, "faults", "object"),
    ({"faults": {"crash": 1}}, "faults.crash", "unknown"),
    ({"faults": {"crash_on_part": 0}}, "faults.crash_on_part", "at least 1"),
    ({"faults": {"drop_result_on_part": "3"}}, "faults.drop_result_on_part", "integer"),
    ({"faults": {"wrong_site_on_part": True}}, "faults.wrong_site_on_part", "integer"),
    ({"faults": {"duplicate_result_on_part": 1.0}}, "faults.duplicate_result_on_part", "integer"),
    ({"faults": {"slow_load": -1}}, "faults.slow_load", "negative"),
    ({"faults": {"fault_site": 1}}, "faults.fault_site", "strings"),
    ({"faults": {"fault_site": "9"}}, "faults.fault_site", "not in sites"),
    ({"broker_port": 99999}, "broker_port", "between 1 and 65535"),
]


@pytest.mark.parametrize(("changes", "key", "fragment"), SIM_ERRORS)
def test_sim_errors(changes: dict[str, Any], key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        sim_config_from_dict(sim_data(**changes), source="sim.toml")
    assert_one_line_error(info.value, "sim.toml", key, fragment)


# --------------------------------------------------------------------------------------
# Purity


def test_config_module_imports_no_twisted() -> None:
    code = (
        "import sys, ate.config; "
        "print(any(m == 'twisted' or m.startswith('twisted.') for m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def test_mqtt_client_choice(tmp_path):
    from ate.config import master_config_from_dict
    from ate.mqtt import twistedlink
    from ate.mqtt.reactorpaho import ReactorPaho
    from ate.mqtt.service import default_link_factory

    base = {"device_id": "D1", "sites": ["0"], "Handler": "H", "jobsource": "filesystem",
            "jobformat": "xml.semi-ate", "filesystemdatasource_path": str(tmp_path),
            "filesystemdatasource_jobpattern": "x#jobname#.xml"}
    cfg = master_config_from_dict(dict(base), source="t")
    assert cfg.mqtt.client == "twisted"
    assert default_link_factory(cfg.mqtt) is twistedlink.create
    cfg = master_config_from_dict(dict(base, mqtt_client="paho"), source="t")
    assert default_link_factory(cfg.mqtt) == ReactorPaho.create
    with pytest.raises(ConfigError) as e:
        master_config_from_dict(dict(base, mqtt_client="hbmqtt"), source="t")
    assert "mqtt_client" in str(e.value)


# --------------------------------------------------------------------------------------
# command-line overrides of the web address; the handler's serial port in the config


def test_web_address_overrides_replace_the_file(workdir: Path) -> None:
    cfg = load_master_config(str(MASTER_FIXTURE), webui_host="::1", webui_port="18090")
    assert (cfg.webui_host, cfg.webui_port) == ("::1", 18090)
    cfg = master_config_from_dict(master_data(), webui_port=18091)
    assert (cfg.webui_host, cfg.webui_port) == ("127.0.0.1", 18091)


@pytest.mark.parametrize("port", ["0", "70000", "x80", 0])
def test_web_port_override_is_validated(port: Any) -> None:
    with pytest.raises(ConfigError) as e:
        master_config_from_dict(master_data(webui_root_path=DELETE), source="m.json",
                                webui_port=port)
    assert str(e.value).startswith("m.json: webui_port: ")


def test_handler_serial_port_and_line_settings() -> None:
    cfg = handler_config_from_dict(handler_data(
        serial_port="/dev/ttyS1", serial_baudrate=9600, serial_parity="E", serial_bytesize=7,
        serial_stopbits=2, serial_timeout=0.5))
    assert (cfg.serial_port, cfg.serial_baudrate, cfg.serial_parity, cfg.serial_bytesize,
            cfg.serial_stopbits, cfg.serial_timeout) == ("/dev/ttyS1", 9600, "E", 7, 2, 0.5)
    plain = handler_config_from_dict(handler_data())
    assert (plain.serial_port, plain.serial_baudrate, plain.serial_parity,
            plain.serial_bytesize, plain.serial_stopbits) == (None, 115200, "N", 8, 1)


@pytest.mark.parametrize("changes,key", [
    ({"serial_port": "/dev/ttyS1", "serial": "tcp:h:1"}, "serial_port"),
    ({"serial_port": "/dev/ttyS1", "listen": "tcp:5000"}, "serial_port"),
    ({"serial_port": ""}, "serial_port"),
    ({"serial_parity": "X"}, "serial_parity"),
    ({"serial_bytesize": 9}, "serial_bytesize"),
    ({"serial_stopbits": 3}, "serial_stopbits"),
    ({"serial_stopbits": True}, "serial_stopbits"),
    ({"serial_baudrate": 0}, "serial_baudrate"),
    ({"serial_timeout": -1}, "serial_timeout"),
])
def test_handler_serial_settings_errors(changes: dict, key: str) -> None:
    with pytest.raises(ConfigError) as e:
        handler_config_from_dict(handler_data(**changes), source="h.json")
    assert str(e.value).startswith(f"h.json: {key}: ")


def test_secrets_are_not_in_the_config_repr() -> None:
    """A config logged or shown in a traceback does not carry the token or the password."""
    import json as _json
    import pathlib as _pathlib

    from ate.config import master_config_from_dict as _from_dict
    data = _json.loads((_pathlib.Path(__file__).resolve().parents[2] / "etc" / "master.json")
                       .read_text())
    data.update(webui_token="SECRET-TOKEN-1", mqtt_username="u", mqtt_password="SECRET-PW-2")
    cfg = _from_dict(data)
    assert (cfg.webui_token, cfg.mqtt.password) == ("SECRET-TOKEN-1", "SECRET-PW-2")
    for text in (repr(cfg), str(cfg), repr(cfg.mqtt)):
        assert "SECRET-TOKEN-1" not in text and "SECRET-PW-2" not in text
    assert "device_id=" in repr(cfg)
