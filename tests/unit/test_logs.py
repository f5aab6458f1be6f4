"""Tests for ate.master.logs (protocol.md section 10)."""

from __future__ import annotations

import os
import re
from datetime import datetime
from pathlib import Path

import pytest
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, LogPublisher
from twisted.python.failure import Failure

from ate.master.logs import (
    LEVELS,
    LOG_BUFFER_BYTES,
    MAX_ENTRY_CHARS,
    LogBuffer,
    LogFileWriter,
    clip_text,
    logfile_name,
    relay_remote_line,
)

T0 = datetime(2026, 11, 24, 18, 29, 58).timestamp()  # local time


def event(fmt="hello {who}", level=LogLevel.info, namespace="ate.master.cell", t=T0, **kw):
    e = {"log_format": fmt, "log_level": level, "log_namespace": namespace, "log_time": t}
    e.setdefault("who", "world")
    e.update(kw)
    return e


@pytest.fixture
def caplog_events():
    """The formatted text of every event logged through the global publisher."""
    from twisted.logger import formatEvent, globalLogPublisher

    seen: list[dict] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        yield lambda: [formatEvent(e) for e in seen]
    finally:
        globalLogPublisher.removeObserver(seen.append)


def logger_into(*observers) -> Logger:
    publisher = LogPublisher(*observers)
    return Logger(namespace="ate.master.cell", observer=publisher)


# -- LogBuffer mapping ----------------------------------------------------------------


def test_entry_shape_and_iso_date():
    buf = LogBuffer(level=10)
    buf(event())
    assert buf.entries() == [
        {"source": "master", "date": "2026-11-24T18:29:58", "type": "INFO",
         "description": "hello world"}
    ]


def test_iso_date_drops_fraction_and_zone():
    buf = LogBuffer(level=10)
    buf(event(t=T0 + 0.75))
    date = buf.entries()[0]["date"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", date)
    assert date == "2026-11-24T18:29:58"


@pytest.mark.parametrize(
    "level, name",
    [(LogLevel.debug, "DEBUG"), (LogLevel.info, "INFO"), (LogLevel.warn, "WARNING"),
     (LogLevel.error, "ERROR"), (LogLevel.critical, "ERROR")],
)
def test_level_mapping(level, name):
    buf = LogBuffer(level=10)
    buf(event(level=level))
    assert buf.entries()[0]["type"] == name


@pytest.mark.parametrize(
    "namespace, extra, source",
    [("ate.master.cell", {}, "master"), ("ate", {}, "master"),
     ("twisted.internet.tcp", {}, "twisted.internet.tcp"), ("atelier", {}, "atelier"),
     ("ate.master.cell", {"ate_source": "control 0"}, "control 0"),
     (None, {}, "master")],
)
def test_source(namespace, extra, source):
    buf = LogBuffer(level=10)
    buf(event(namespace=namespace, **extra))
    assert buf.entries()[0]["source"] == source


def test_missing_time_uses_clock():
    clock = Clock()
    clock.advance(T0 + 60)
    buf = LogBuffer(level=10, clock=clock)
    e = event()
    del e["log_time"]
    buf(e)
    assert buf.entries()[0]["date"] == "2026-11-24T18:30:58"


def test_failure_summary_appended():
    buf = LogBuffer(level=10)
    try:
        _ = 1 / 0
    except ZeroDivisionError:
        f = Failure()
    logger_into(buf).failure("while computing {what}", failure=f, what="yield")
    entry = buf.entries()[0]
    assert entry["type"] == "ERROR"
    assert entry["description"] == "while computing yield [ZeroDivisionError: division by zero]"


def test_braces_and_bad_format_do_not_raise():
    buf = LogBuffer(level=10)
    buf(event(fmt="broken {missing"))
    buf({"log_level": "nonsense"})          # odd event: no format, unknown level
    buf({})
    assert len(buf.entries()) == 3
    assert buf.entries()[1]["type"] == "INFO"


def test_observer_never_raises_with_failing_subscriber():
    buf = LogBuffer(level=10)
    got = []

    def bad(entry):
        raise RuntimeError("boom")

    buf.subscribe(bad)
    buf.subscribe(got.append)
    buf(event())
    assert len(got) == 1 and buf.errors == 1


def test_through_a_real_logger():
    buf = LogBuffer(level=20)
    logger_into(buf).info("lot {lot} loaded", lot="306426001")
    assert buf.entries()[0]["description"] == "lot 306426001 loaded"


# -- level -----------------------------------------------------------------------------


def test_level_filter_and_set_level():
    buf = LogBuffer()                    # default 30
    assert buf.level == 30
    buf(event(level=LogLevel.info, fmt="info"))
    buf(event(level=LogLevel.warn, fmt="warn"))
    assert [e["description"] for e in buf.entries()] == ["warn"]
    buf.set_level(10)
    buf(event(level=LogLevel.debug, fmt="debug"))
    assert [e["description"] for e in buf.entries()] == ["debug", "warn"]
    buf.level = 40
    buf(event(level=LogLevel.warn, fmt="warn2"))
    assert len(buf.entries()) == 2


@pytest.mark.parametrize("bad", [0, 15, 50, "20", 20.0, True, None])
def test_set_level_refuses_other_levels(bad):
    buf = LogBuffer()
    with pytest.raises(ValueError, match="log level"):
        buf.set_level(bad)
    assert buf.level == 30


def test_constructor_validates():
    with pytest.raises(ValueError, match="log level"):
        LogBuffer(level=25)
    with pytest.raises(ValueError, match="maxlen"):
        LogBuffer(maxlen=0)


# -- capacity, order, drain, subscribe ---------------------------------------------------


def test_maxlen_4000_keeps_newest():
    buf = LogBuffer(level=10)
    for i in range(4005):
        buf(event(fmt="n{i}", i=i))
    entries = buf.entries()
    assert len(entries) == 4000
    assert entries[0]["description"] == "n4004"
    assert entries[-1]["description"] == "n5"
    assert buf.entries(newest_first=False)[0]["description"] == "n5"


def test_drain_new_newest_first_and_resets():
    buf = LogBuffer(level=10, maxlen=3)
    assert buf.drain_new() == []
    for i in range(2):
        buf(event(fmt="a{i}", i=i))
    assert [e["description"] for e in buf.drain_new()] == ["a1", "a0"]
    assert buf.drain_new() == []
    for i in range(5):
        buf(event(fmt="b{i}", i=i))
    assert [e["description"] for e in buf.drain_new()] == ["b4", "b3", "b2"]  # bounded


def test_entries_are_copies():
    buf = LogBuffer(level=10)
    buf(event())
    buf.entries()[0]["type"] = "X"
    assert buf.entries()[0]["type"] == "INFO"


def test_subscribe_unsubscribe_after_filter():
    buf = LogBuffer(level=30)
    got = []
    buf.subscribe(got.append)
    buf.subscribe(got.append)          # once only
    buf(event(level=LogLevel.info))
    buf(event(level=LogLevel.error, fmt="e"))
    assert [e["description"] for e in got] == ["e"]
    buf.unsubscribe(got.append)
    buf.unsubscribe(got.append)        # unknown: ignored
    buf(event(level=LogLevel.error))
    assert len(got) == 1


# -- remote lines ------------------------------------------------------------------------


def test_relay_remote_line():
    buf = LogBuffer(level=10)
    relay_remote_line(logger_into(buf), "Control", "0",
                      "control 0|24/11/2026 06:29:50 PM |INFO    |control state is: busy")
    assert buf.entries()[0] == {
        "source": "control 0", "date": buf.entries()[0]["date"], "type": "INFO",
        "description": "[24/11/2026 06:29:50 PM] control state is: busy"}


@pytest.mark.parametrize(
    "level, expected",
    [("DEBUG", "DEBUG"), ("MEASURE", "DEBUG"), ("warning", "WARNING"),
     ("ERROR  ", "ERROR"), ("CRITICAL", "ERROR")],
)
def test_relay_levels(level, expected):
    buf = LogBuffer(level=10)
    relay_remote_line(logger_into(buf), "TestApp", "1", f"testapp 1|d|{level}|m")
    assert buf.entries()[0]["type"] == expected


def test_relay_keeps_pipes_and_braces_in_message():
    buf = LogBuffer(level=10)
    relay_remote_line(logger_into(buf), "TestApp", "1", "testapp 1|d|INFO|a|b {x}\n")
    assert buf.entries()[0]["description"] == "[d] a|b {x}"


@pytest.mark.parametrize("line", ["just text", "a|b|c", "", "n|d|NOTALEVEL|m"])
def test_relay_short_or_odd_line_verbatim_at_warning(line):
    buf = LogBuffer(level=10)
    relay_remote_line(logger_into(buf), "TestApp", "2", line)
    assert buf.entries()[0] == {
        "source": "TestApp 2", "date": buf.entries()[0]["date"], "type": "WARNING",
        "description": line}


def test_relay_respects_level_filter():
    buf = LogBuffer(level=30)
    relay_remote_line(logger_into(buf), "Control", "0", "control 0|d|INFO|quiet")
    assert buf.entries() == []


# -- logfile (getlogfile) ----------------------------------------------------------------


def test_logfile_without_file():
    clock = Clock()
    clock.advance(T0)
    buf = LogBuffer(level=10, clock=clock)
    buf(event(fmt="one"))
    buf(event(fmt="two", level=LogLevel.error))
    out = buf.logfile()
    assert out["filename"] == "20261124-182958_master.log"
    assert out["content"] == (
        "master|2026-11-24T18:29:58|INFO|one\n"
        "master|2026-11-24T18:29:58|ERROR|two\n")


def test_logfile_includes_current_file(tmp_path):
    (tmp_path / "20260101-000000_master.log").write_text("old\n")
    (tmp_path / "20261124-182946_master.log").write_text("file line 1\nfile line 2\n")
    (tmp_path / "unrelated.log").write_text("no\n")
    buf = LogBuffer(level=10, log_directory=str(tmp_path))
    buf(event(fmt="mem"))
    out = buf.logfile()
    assert out["filename"] == "20261124-182946_master.log"
    assert out["content"] == (
        "master|2026-11-24T18:29:58|INFO|mem\n"
        "=== log file 20261124-182946_master.log ===\n"
        "file line 1\nfile line 2\n")


def test_logfile_cap_keeps_newest_whole_lines(tmp_path):
    path = tmp_path / "20261124-182946_master.log"
    path.write_text("".join(f"file {i:04d}\n" for i in range(100)))   # 10 bytes a line
    buf = LogBuffer(level=10, log_directory=str(tmp_path), logfile_cap=200)
    for i in range(3):
        buf(event(fmt="m{i}", i=i))
    content = buf.logfile()["content"]
    assert len(content.encode()) <= 200
    assert content.startswith("master|2026-11-24T18:29:58|INFO|m0\n")
    assert content.endswith("file 0099\n")
    lines = content.splitlines()
    assert all(line.startswith(("master|", "===", "file ")) for line in lines)
    assert all(len(line) == 9 for line in lines if line.startswith("file "))


def test_logfile_cap_on_memory_alone():
    buf = LogBuffer(level=10, logfile_cap=100)
    for i in range(50):
        buf(event(fmt="entry {i:02d}", i=i))
    content = buf.logfile()["content"]
    assert len(content.encode()) <= 100
    assert content.endswith("|entry 49\n")
    assert content.startswith("master|")


def test_logfile_explicit_path(tmp_path):
    path = tmp_path / "whatever_master.log"
    path.write_text("x\n")
    buf = LogBuffer(level=10)
    buf.logfile_path = str(path)
    out = buf.logfile()
    assert out["filename"] == "whatever_master.log"
    assert out["content"].endswith("x\n")


# -- LogFileWriter -----------------------------------------------------------------------


def make_clock(t=T0) -> Clock:
    clock = Clock()
    clock.advance(t)
    return clock


def test_writer_creates_dir_and_file_with_reference_format(tmp_path):
    d = tmp_path / "log"
    w = LogFileWriter(str(d), clock=make_clock())
    assert w.path == str(d / "20261124-182958_master.log")
    w(event(fmt="cannot trigger", level=LogLevel.error))
    w(event(fmt="remote", ate_source="control 0"))
    w.close()
    assert (d / "20261124-182958_master.log").read_text().splitlines() == [
        "master   |24/11/2026 06:29:58 PM |ERROR   |cannot trigger",
        "control 0|24/11/2026 06:29:58 PM |INFO    |remote",
    ]


def test_writer_level(tmp_path):
    w = LogFileWriter(str(tmp_path), level=30, clock=make_clock())
    w(event(fmt="info"))
    w.set_level(20)
    w(event(fmt="info2"))
    w.close()
    assert [line.split("|")[-1] for line in Path(w.path).read_text().splitlines()] == ["info2"]
    with pytest.raises(ValueError):
        w.set_level(5)


def test_writer_rotates_with_one_backup(tmp_path):
    w = LogFileWriter(str(tmp_path), max_bytes=200, clock=make_clock())
    line_len = len(w.format(event(fmt="x" * 10)).encode())
    for _ in range(12):
        w(event(fmt="x" * 10))
    w.close()
    names = sorted(os.listdir(tmp_path))
    base = "20261124-182958_master.log"
    assert names == [base, base + ".1"]
    for name in names:
        assert os.path.getsize(tmp_path / name) <= 200
    per_file = 200 // line_len
    total = 12 * line_len
    assert os.path.getsize(tmp_path / base) == (12 % per_file or per_file) * line_len
    assert os.path.getsize(tmp_path / (base + ".1")) == per_file * line_len
    assert total > 200   # really rotated more than once, only one backup kept


def test_writer_deletes_files_older_than_14_days(tmp_path):
    now = T0
    old = tmp_path / "20261001-000000_master.log"
    old_backup = tmp_path / "20261001-000000_master.log.1"
    recent = tmp_path / "20261120-000000_master.log"
    foreign = tmp_path / "notes.txt"
    for p in (old, old_backup, recent, foreign):
        p.write_text("x\n")
    for p in (old, old_backup, foreign):
        os.utime(p, (now - 15 * 86400, now - 15 * 86400))
    os.utime(recent, (now - 13 * 86400, now - 13 * 86400))
    w = LogFileWriter(str(tmp_path), clock=make_clock(now))
    w.close()
    assert sorted(w.deleted) == [old.name, old_backup.name]
    assert not old.exists() and not old_backup.exists()
    assert recent.exists() and foreign.exists()


def test_writer_appends_to_existing_file_and_never_raises(tmp_path):
    w = LogFileWriter(str(tmp_path), clock=make_clock())
    w(event(fmt="a"))
    w._file.close()                      # simulate a broken file object
    w(event(fmt="b"))                    # counted, not raised
    assert w.errors == 1
    w(event(fmt="c"))                    # reopened
    w.close()
    assert [line.split("|")[-1] for line in Path(w.path).read_text().splitlines()] == ["a", "c"]


def test_writer_and_buffer_together(tmp_path):
    clock = make_clock()
    w = LogFileWriter(str(tmp_path), clock=clock)
    buf = LogBuffer(level=20, log_directory=str(tmp_path), clock=clock)
    log = logger_into(w, buf)
    log.warn("careful {x}", x=1)
    w.close()
    out = buf.logfile()
    assert out["filename"] == logfile_name(T0)
    assert out["content"].count("careful 1") == 2


def test_levels_table():
    assert LEVELS == {10: "DEBUG", 20: "INFO", 30: "WARNING", 40: "ERROR"}


# -- bounded memory (issue 11, item 4) ---------------------------------------------------


def test_huge_entry_is_cut_with_a_marker():
    buf = LogBuffer(level=10)
    buf(event(fmt="{blob}", blob="x" * 1_000_000))
    text = buf.entries()[0]["description"]
    assert len(text) <= MAX_ENTRY_CHARS
    assert text.startswith("x" * 1000)
    cut = 1_000_000 - text.index(" [... ")
    assert text.endswith(f" [... {cut} characters cut]")


def test_cut_keeps_short_text_and_fits_the_limit_exactly():
    assert clip_text("short", 10) == "short"
    for n in (61, 99, 100, 101, 10_000):
        out = clip_text("y" * n, 60)
        assert len(out) <= 60 and out.endswith("characters cut]")
        kept = out.index(" [... ")
        assert out == "y" * kept + f" [... {n - kept} characters cut]"


def test_buffer_is_bounded_by_bytes_not_only_by_entries():
    buf = LogBuffer(level=10, max_bytes=1_000_000)
    for i in range(400):
        buf(event(fmt="{i} {blob}", i=i, blob="z" * 1_000_000))
    entries = buf.entries()
    assert sum(len(e["description"]) for e in entries) <= 1_000_000
    assert buf.bytes <= 1_000_000
    assert entries[0]["description"].startswith("399 ")   # the newest are kept
    assert len(buf.drain_new()) == len(entries)           # the push queue is bounded too
    for i in range(10):                                   # small entries: counted small
        buf(event(fmt="small {i}", i=i))
    assert buf.entries()[0]["description"] == "small 9"


def test_default_byte_bound_keeps_4000_ordinary_entries():
    buf = LogBuffer(level=10)
    for i in range(4000):
        buf(event(fmt="site {i}: control state is: busy, testapp idle, part P{i}", i=i))
    assert len(buf.entries()) == 4000
    assert buf.bytes <= LOG_BUFFER_BYTES


def test_constructor_validates_max_bytes():
    with pytest.raises(ValueError, match="max_bytes"):
        LogBuffer(max_bytes=0)


def test_writer_cuts_huge_lines(tmp_path):
    w = LogFileWriter(str(tmp_path), clock=make_clock())
    w(event(fmt="{blob}", blob="q" * 1_000_000))
    w.close()
    line = Path(w.path).read_text()
    assert len(line) < MAX_ENTRY_CHARS + 100
    assert "characters cut]" in line


# -- getlogfile serves regular files of the log directory only (issue 11, item 6) --------


def test_logfile_does_not_follow_a_symlink(tmp_path, caplog_events):
    outside = tmp_path / "secret.txt"
    outside.write_text("TOP SECRET\n")
    logdir = tmp_path / "log"
    logdir.mkdir()
    (logdir / "20261124-182946_master.log").write_text("ours\n")
    os.symlink(outside, logdir / "20991231-235959_master.log")   # newer name, a link
    buf = LogBuffer(level=10, log_directory=str(logdir))
    out = buf.logfile()
    assert "TOP SECRET" not in out["content"]
    assert out["filename"] == "20261124-182946_master.log"
    assert out["content"].endswith("ours\n")
    assert any("20991231-235959_master.log is not a regular file" in t
               for t in caplog_events())


def test_logfile_only_link_or_fifo_serves_nothing(tmp_path, caplog_events):
    outside = tmp_path / "secret.txt"
    outside.write_text("TOP SECRET\n")
    logdir = tmp_path / "log"
    logdir.mkdir()
    os.symlink(outside, logdir / "20991231-235959_master.log")
    os.mkfifo(logdir / "20991231-235958_master.log")
    buf = LogBuffer(level=10, log_directory=str(logdir))
    buf(event(fmt="mem"))
    out = buf.logfile()
    assert "TOP SECRET" not in out["content"]
    assert out["content"] == "master|2026-11-24T18:29:58|INFO|mem\n"
    # an explicit path that is a link is not followed either
    buf.logfile_path = str(logdir / "20991231-235959_master.log")
    assert "TOP SECRET" not in buf.logfile()["content"]
    buf.logfile_path = str(logdir / "20991231-235958_master.log")   # a FIFO: no hang
    assert buf.logfile()["content"] == "master|2026-11-24T18:29:58|INFO|mem\n"
    assert any("not served" in t for t in caplog_events())
