"""The master config keys ``alarms`` and ``history_database`` (protocol.md 15.1, 15.3)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ate.alarms import AlarmRule
from ate.config import ConfigError, load_master_config, master_config_from_dict

BASE: dict[str, Any] = {
    "device_id": "SCT-81-1F",
    "sites": ["0", "1", "2", "3"],
    "Handler": "HTO92-20F",
    "jobsource": "filesystem",
    "jobformat": "xml.semi-ate",
    "filesystemdatasource_path": "./jobs",
    "filesystemdatasource_jobpattern": "le#jobname#.xml",
}

BASE_TOML = """\
device_id = "SCT-81-1F"
sites = ["0", "1", "2", "3"]
Handler = "HTO92-20F"
jobsource = "filesystem"
jobformat = "xml.semi-ate"
filesystemdatasource_path = "./jobs"
filesystemdatasource_jobpattern = "le#jobname#.xml"
"""

RULES_TOML = """\
history_database = "/var/lib/ate/history.sqlite"

[[alarms]]
kind = "consecutive_fails"
action = "hold"
count = 8

[[alarms]]
kind = "bin_limit"
name = "contact_opens"
sbin = 12
max_percent = 4.0
"""

EXPECTED = (
    AlarmRule(kind="consecutive_fails", name="consecutive_fails", action="hold", count=8),
    AlarmRule(kind="bin_limit", name="contact_opens", sbin=12, max_percent=4.0),
)


def test_defaults_no_alarms_and_the_default_history_database() -> None:
    config = master_config_from_dict(BASE)
    assert config.alarms == ()
    assert config.history_database is None
    assert config.warnings == ()


def test_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "master.toml"
    path.write_text(BASE_TOML + RULES_TOML)
    config = load_master_config(path)
    assert config.alarms == EXPECTED
    assert config.history_database == "/var/lib/ate/history.sqlite"
    assert config.warnings == ()


def test_json_file(tmp_path: Path) -> None:
    path = tmp_path / "master.json"
    path.write_text(json.dumps(dict(BASE, history_database="history.sqlite", alarms=[
        {"kind": "consecutive_fails", "action": "hold", "count": 8},
        {"kind": "bin_limit", "name": "contact_opens", "sbin": 12, "max_percent": 4.0}])))
    config = load_master_config(path)
    assert config.alarms == EXPECTED
    assert config.history_database == "history.sqlite"
    assert config.warnings == ()


def test_json_null_history_database_is_the_default() -> None:
    assert master_config_from_dict(dict(BASE, history_database=None)).history_database is None


def test_a_bad_rule_in_toml_names_the_file_the_rule_and_the_field(tmp_path: Path) -> None:
    path = tmp_path / "master.toml"
    path.write_text(BASE_TOML + RULES_TOML.replace("max_percent = 4.0", 'max_percent = "x"'))
    with pytest.raises(ConfigError) as info:
        load_master_config(path)
    assert (info.value.file, info.value.key) == (str(path), "alarms[1].max_percent")
    assert str(info.value) == f"{path}: alarms[1].max_percent: must be a number 0..100, got 'x'"


@pytest.mark.parametrize("alarms, key, problem", [
    ({"kind": "lot_yield"}, "alarms", "must be a list of rule objects ([[alarms]] in TOML), "
                                      "got an object"),
    ([{"kind": "foo"}], "alarms[0]", "unknown kind 'foo' (known: "),
    ([{"kind": "lot_yield", "min_percent": 5}, {"kind": "consecutive_fails", "cnt": 1}],
     "alarms[1]", "unknown field 'cnt'"),
    ([{"kind": "consecutive_fails"}, {"kind": "consecutive_fails"}], "alarms[1]",
     "a second consecutive_fails rule needs a 'name'"),
])
def test_a_bad_rule_in_json(alarms: Any, key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        master_config_from_dict(dict(BASE, alarms=alarms), source="m.json")
    assert (info.value.file, info.value.key) == ("m.json", key)
    assert info.value.problem.startswith(problem)


@pytest.mark.parametrize("value, problem", [
    ("", "must not be empty"),
    (3, "must be a string, got integer 3"),
])
def test_bad_history_database(value: Any, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        master_config_from_dict(dict(BASE, history_database=value), source="m.json")
    assert str(info.value) == f"m.json: history_database: {problem}"
