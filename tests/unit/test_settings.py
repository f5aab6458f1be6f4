"""Tests for ate.master.settings (protocol.md section 8)."""

from __future__ import annotations

import json
import os

import pytest
from twisted.logger import LogLevel, capturedLogs

from ate.master.settings import NAMES, SettingsError, UserSettings, default_settings

DEFAULT = {"active": False, "value": -1}


def read(path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def levels(events) -> list[LogLevel]:
    return [e["log_level"] for e in events]


def all_six(**changes) -> list[dict]:
    items = []
    for name in NAMES:
        active, value = changes.get(name, (False, -1))
        items.append({"name": name, "active": active, "value": value})
    return items


# -- construction and persistence ------------------------------------------------------


def test_memory_only_has_defaults_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = UserSettings(None)
    assert s.as_dict() == {name: DEFAULT for name in NAMES}
    s.update(all_six(stop_on_fail=(True, 3)))
    assert s.as_dict()["stop_on_fail"] == {"active": True, "value": 3}
    assert os.listdir(tmp_path) == []


def test_missing_file_is_created_with_all_defaults(tmp_path):
    path = tmp_path / "sub" / "settings.json"
    UserSettings(str(path))
    assert read(path) == default_settings()
    text = path.read_text(encoding="utf-8")
    assert text == json.dumps(default_settings(), indent=4, sort_keys=True) + "\n"


def test_file_is_merged_over_defaults_and_rewritten(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"single_step": {"active": True, "value": 7}}))
    s = UserSettings(str(path))
    expected = default_settings()
    expected["single_step"] = {"active": True, "value": 7}
    assert s.as_dict() == expected
    assert read(path) == expected


def test_unknown_key_dropped_with_warning(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"bogus": {"active": True, "value": 1},
                                "stop_on_test": {"active": True, "value": "12"}}))
    with capturedLogs() as events:
        s = UserSettings(str(path))
    assert "bogus" not in s.as_dict()
    assert s.as_dict()["stop_on_test"] == {"active": True, "value": 12}
    assert "bogus" not in read(path)
    warnings = [e for e in events if e["log_level"] is LogLevel.warn]
    assert len(warnings) == 1 and warnings[0]["name"] == "bogus"


def test_invalid_known_entry_in_file_uses_default(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"stop_on_fail": {"active": "yes", "value": 1},
                                "single_step": {"active": True, "value": 2}}))
    with capturedLogs() as events:
        s = UserSettings(str(path))
    assert s.as_dict()["stop_on_fail"] == DEFAULT
    assert s.as_dict()["single_step"] == {"active": True, "value": 2}
    assert LogLevel.warn in levels(events)


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b"\xff\xfe\x00", b""])
def test_corrupt_file_tolerated_and_not_overwritten(tmp_path, content):
    path = tmp_path / "settings.json"
    path.write_bytes(content)
    with capturedLogs() as events:
        s = UserSettings(str(path))
    assert s.as_dict() == default_settings()
    assert LogLevel.error in levels(events)
    assert path.read_bytes() == content
    # ...until the next change
    s.update(all_six(trigger_on_test=(True, 1005)))
    assert read(path)["trigger_on_test"] == {"active": True, "value": 1005}


def test_unreadable_path_logs_error(tmp_path):
    path = tmp_path / "adir"
    path.mkdir()
    with capturedLogs() as events:
        s = UserSettings(str(path))
    assert s.as_dict() == default_settings()
    assert LogLevel.error in levels(events)
    # a failing save is logged, not raised, and the change holds in memory
    with capturedLogs() as events:
        s.update(all_six(single_step=(True, 1)))
    assert s.as_dict()["single_step"] == {"active": True, "value": 1}
    assert LogLevel.error in levels(events)


def test_atomic_write_leaves_no_temp_files(tmp_path):
    path = tmp_path / "settings.json"
    s = UserSettings(str(path))
    for i in range(5):
        s.update(all_six(stop_on_test=(True, i)))
    s.reset_to_defaults()
    assert os.listdir(tmp_path) == ["settings.json"]
    assert read(path) == default_settings()


def test_failed_write_removes_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "settings.json"
    s = UserSettings(str(path))
    before = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", broken_replace)
    with capturedLogs() as events:
        s.update(all_six(single_step=(True, 4)))
    assert LogLevel.error in levels(events)
    assert os.listdir(tmp_path) == ["settings.json"]
    assert path.read_bytes() == before


# -- update ----------------------------------------------------------------------------


def test_update_starts_from_defaults(tmp_path):
    path = tmp_path / "settings.json"
    s = UserSettings(str(path))
    s.update([{"name": "stop_on_fail", "active": True, "value": 2}])
    s.update([{"name": "single_step", "active": True, "value": 5}])
    assert s.as_dict()["stop_on_fail"] == DEFAULT
    assert s.as_dict()["single_step"] == {"active": True, "value": 5}
    assert read(path) == s.as_dict()


@pytest.mark.parametrize(
    "value, expected",
    [(0, 0), (None, -1), ("17", 17), (" -3 ", -3), ("+4", 4), (1005, 1005), (-1, -1)],
)
def test_update_value_conversion(value, expected):
    s = UserSettings(None)
    s.update([{"name": "stop_on_test", "active": True, "value": value}])
    assert s.as_dict()["stop_on_test"] == {"active": True, "value": expected}


def test_missing_value_means_minus_one():
    s = UserSettings(None)
    s.update([{"name": "trigger_on_test", "active": True}])
    assert s.as_dict()["trigger_on_test"] == {"active": True, "value": -1}


@pytest.mark.parametrize(
    "items, fragment",
    [
        ([{"name": "nope", "active": True, "value": 1}], "'nope'"),
        ([{"active": True, "value": 1}], "unknown setting name None"),
        ([{"name": "single_step", "active": "true", "value": 1}], "'active' must be a boolean"),
        ([{"name": "single_step", "active": 1, "value": 1}], "'active' must be a boolean"),
        ([{"name": "single_step", "value": 1}], "'active' must be a boolean"),
        ([{"name": "single_step", "active": True, "value": 1.5}], "float"),
        ([{"name": "single_step", "active": True, "value": "1.5"}], "'1.5'"),
        ([{"name": "single_step", "active": True, "value": "1_000"}], "'1_000'"),
        ([{"name": "single_step", "active": True, "value": True}], "True"),
        ([{"name": "single_step", "active": True, "value": [1]}], "list"),
        (["single_step"], "entry 0"),
        ({"name": "single_step"}, "must be a list"),
        ("single_step", "must be a list"),
        (None, "must be a list"),
    ],
)
def test_update_validation_refuses_with_nothing_changed(tmp_path, items, fragment):
    path = tmp_path / "settings.json"
    s = UserSettings(str(path))
    s.update(all_six(stop_on_fail=(True, 9)))
    before_file = path.read_bytes()
    before = s.as_dict()
    with pytest.raises(SettingsError) as info:
        s.update(items)
    assert fragment in str(info.value)
    assert s.as_dict() == before
    assert path.read_bytes() == before_file


def test_validation_happens_before_any_change():
    s = UserSettings(None)
    good_then_bad = [
        {"name": "stop_on_fail", "active": True, "value": 1},
        {"name": "single_step", "active": "no"},
    ]
    with pytest.raises(SettingsError, match="single_step"):
        s.update(good_then_bad)
    assert s.as_dict() == default_settings()


def test_duplicate_name_takes_last_entry():
    s = UserSettings(None)
    s.update([{"name": "single_step", "active": True, "value": 1},
              {"name": "single_step", "active": False, "value": 2}])
    assert s.as_dict()["single_step"] == {"active": False, "value": 2}


# -- views -----------------------------------------------------------------------------


def test_job_data_is_fresh_and_keeps_old_values():
    s = UserSettings(None)
    first = s.job_data()
    first["sites_info"] = []
    assert "sites_info" not in s.job_data()
    s.update(all_six(single_step=(True, 3)))
    assert first["single_step"] == DEFAULT
    assert s.job_data()["single_step"] == {"active": True, "value": 3}
    assert list(s.job_data()) == list(NAMES)


def test_testoptions_shape():
    s = UserSettings(None)
    s.update(all_six(trigger_site_specific=(True, 2)))
    opts = s.testoptions()
    assert [o["name"] for o in opts] == list(NAMES)
    assert opts[-1] == {"name": "trigger_site_specific", "active": True, "value": 2}
    assert all(set(o) == {"name", "active", "value"} for o in opts)


def test_as_dict_is_a_copy():
    s = UserSettings(None)
    d = s.as_dict()
    d["single_step"]["active"] = True
    assert s.as_dict()["single_step"] == DEFAULT


def test_reset_to_defaults_saves(tmp_path):
    path = tmp_path / "settings.json"
    s = UserSettings(str(path))
    s.update(all_six(stop_on_fail=(True, 0)))
    assert read(path)["stop_on_fail"] == {"active": True, "value": 0}
    s.reset_to_defaults()
    assert s.as_dict() == default_settings()
    assert read(path) == default_settings()
    # a second instance reads the same back
    assert UserSettings(str(path)).as_dict() == default_settings()
