"""``twistd -n ate-demo`` as a subprocess: parts flow, SIGTERM exits 0, every datalog is
complete; ``--lots N`` exits 0 after N lots with no WARNING and at most ``--keep-lots``
lots on disk; the default datalog directory is temporary; the default demo's drifting site
fires an alarm in its second lot, not in its first; and its options."""

from __future__ import annotations

import glob
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage

import ate
from ate.broker import free_port
from ate.stdf.records import iter_records
from tests.stdfread import read_stdf
from tests.twistdrun import TWISTD, env

FAR, MRR = (0, 10), (1, 20)


def get_status(port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/status", timeout=2) as r:
            return json.loads(r.read())
    except (OSError, ValueError):
        return None


def wait_for(predicate, timeout: float, what: str, output) -> object:
    """Poll ``predicate`` (short waits) until it returns something true; fail after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"{what} not within {timeout} s; output:\n{output()}")


def record_kinds(path: str) -> list[tuple[int, int]]:
    with open(path, "rb") as f:
        return [(r.rec_typ, r.rec_sub) for r in iter_records(f.read())]


def test_demo_runs_lots_and_exits_cleanly_on_sigterm(tmp_path):
    port = free_port()
    stdf = tmp_path / "stdf"
    out_path = tmp_path / "demo.out"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(
            TWISTD + ["-n", "--pidfile=", "ate-demo", "--port", str(port), "--stdf-dir",
                      str(stdf), "--test-time", "0.01", "--parts-per-lot", "30"],
            cwd=str(tmp_path), env=env(), stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT)

    def output() -> str:
        return out_path.read_text(errors="replace")

    broker_pid = None
    try:
        first = wait_for(lambda: (s := get_status(port)) and s["parts"] > 0 and s,
                         60, "a first tested part", output)

        def progressed():
            s = get_status(port)
            if s is None:
                return None
            # more parts in the same lot, or the next lot (the first one was ended)
            return (s["datalog"] != first["datalog"] or s["parts"] > first["parts"]) and s

        later = wait_for(progressed, 30, "more tested parts", output)
        assert later["device_id"] == "SCT-81-1F" and later["sites"] == ["0", "1", "2", "3"]
        text = output()
        assert text.count(f"http://127.0.0.1:{port}/") == 1, text   # the URL, once
        assert f"ate-demo {ate.__version__}: open http://127.0.0.1:{port}/ ;" in text
        found = re.search(r"private mosquitto broker \(pid (\d+)\)", text)
        assert found, text
        broker_pid = int(found.group(1))

        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(timeout=10) == 0, output()
        except subprocess.TimeoutExpired:
            pytest.fail(f"ate-demo did not exit within 10 s of SIGTERM; output:\n{output()}")
        # its private broker was stopped too
        with pytest.raises(ProcessLookupError):
            os.kill(broker_pid, 0)
        broker_pid = None

        files = sorted(glob.glob(str(stdf / "*.stdf")))
        assert files, output()
        for path in files:
            kinds = record_kinds(path)
            assert kinds[0] == FAR and kinds[-1] == MRR, path
            assert kinds.count(MRR) == 1, path
        assert "Traceback" not in output()
    finally:
        if proc.poll() is None:
            # SIGTERM first: the demo stops its own broker (which runs in its own session)
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
        if broker_pid is not None:
            try:
                os.kill(broker_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# --------------------------------------------------------------------------------------
# options and assembly (no process, no broker)


def parse(*args: str):
    from ate.demo import Options

    opts = Options()
    opts.parseOptions(list(args))
    return opts


def test_options_defaults_and_faults():
    opts = parse()
    assert (opts["sites"], opts["test-time"], opts["parts-per-lot"], opts["web-port"],
            opts["stdf-dir"], opts["keep-lots"], opts["lots"], opts["verbose"],
            opts["faults"]) == (4, 0.05, 200, 8081, None, 20, 0, 0, {})
    assert parse("--port", "9000")["web-port"] == 9000          # the old name
    assert parse("--web-port", "0")["web-port"] == 0
    with pytest.raises(usage.UsageError, match="--web-port"):
        parse("--web-port", "65536")
    opts = parse("--sites", "8", "--fault", "crash_on_part=50,slow_load=0.5",
                 "--fault", "fault_site=3", "--lots", "2")
    assert opts["sites"] == 8 and opts["lots"] == 2
    assert opts["faults"] == {"crash_on_part": 50, "slow_load": 0.5, "fault_site": "3"}
    assert opts["fault_specs"] == [] and not parse()["healthy"] and parse("--healthy")["healthy"]
    with pytest.raises(usage.UsageError, match="NAME one of"):
        parse("--fault", "explode=3")
    with pytest.raises(usage.UsageError, match="faults.crash_on_part"):
        parse("--fault", "crash_on_part=0")
    with pytest.raises(usage.UsageError, match="faults.fault_site"):
        parse("--fault", "fault_site=9")           # not one of the 4 sites
    with pytest.raises(usage.UsageError, match="--sites"):
        parse("--sites", "0")


def test_the_demo_fault_and_alarms(tmp_path):
    """Without --fault the last site drifts from its first part of the second lot on; any
    --fault or --healthy drops it, and so does a single site.  The alarm rules all notify."""
    from ate.alarms import parse_alarms
    from ate.demo import DEMO_ALARMS, default_fault_spec, master_config, sim_config

    assert default_fault_spec(parse()) == "drift:site=3,after=50,yield=40"
    [drift] = sim_config(parse(), 1883).faults.drift
    assert (drift.site, drift.after, drift.yield_percent) == ("3", 50, 40.0)
    # 30 parts on 4 sites: 8, 8, 7, 7 in a lot; 8 sites of 201 parts: site 7 tests 25
    assert default_fault_spec(parse("--parts-per-lot", "30")) == "drift:site=3,after=7,yield=40"
    assert default_fault_spec(parse("--sites", "8", "--parts-per-lot", "201")) == (
        "drift:site=7,after=25,yield=40")
    for args in (("--healthy",), ("--sites", "1"), ("--fault", "crash_on_part=9"),
                 ("--fault", "bin_storm:site=1,after=5,sbin=12")):
        assert default_fault_spec(parse(*args)) is None, args
    assert sim_config(parse("--healthy"), 1883).faults.describe() == "none"
    [storm] = sim_config(parse("--fault", "bin_storm:site=1,after=5,sbin=12"), 1).faults.bin_storm
    assert storm.site == "1" and not sim_config(parse("--fault", "slow_load=1"), 1).faults.drift
    cfg = master_config(parse(), 1883, str(tmp_path / "jobs"), str(tmp_path / "stdf"))
    assert [(r.kind, r.name, r.action) for r in cfg.alarms] == [
        ("site_divergence", "site_divergence", "notify"),
        ("consecutive_fails", "consecutive_fails", "notify"),
        ("bin_limit", "contact_opens", "notify")]
    assert cfg.alarms == parse_alarms(DEMO_ALARMS)


def test_make_service_order_and_configs(tmp_path):
    from ate.broker import Mosquitto
    from ate.demo import DemoHandler, build_demo

    opts = parse("--sites", "2", "--stdf-dir", str(tmp_path / "d"), "--web-port", "18999",
                 "--fault", "crash_on_part=5", "--lots", "3")
    broker = Mosquitto(port=free_port())   # not started
    clock = MemoryReactorClock()
    clock.getThreadPool = lambda: None     # build_master asks for it; unused here
    top, parts = build_demo(opts, clock, broker, observe_logs=False)
    try:
        names = [type(s).__name__ for s in top]
        assert names == ["BrokerService", "MultiService", "SimSitesService",
                         "QuietHandlerService", "ReportService", "LotLimit"]
        assert parts["stdf_dir"] == str(tmp_path / "d")
        cfg = parts["cell"].config
        assert (cfg.webui_host, cfg.webui_port, cfg.sites) == ("127.0.0.1", 18999, ("0", "1"))
        assert cfg.mqtt.port == broker.port and parts["sites"].config.faults.crash_on_part == 5
        assert os.path.isfile(os.path.join(cfg.filesystemdatasource_path, "le306426001.xml"))
        assert parts["url"] == "http://127.0.0.1:18999/"
        device = parts["device"]
        assert isinstance(device, DemoHandler) and device.sites == 2
        device.lot_index = 2
        assert device.lot == "306426.001"
        device.lot_index = 3
        assert device.lot is None
        forever = DemoHandler(MemoryReactorClock(), lot_count=0)
        forever.lot_index = 10**6
        assert forever.lot == "306426.001"
    finally:
        import shutil
        shutil.rmtree(parts["work_dir"], ignore_errors=True)


def test_amqtt_when_mosquitto_is_missing(monkeypatch):
    import ate.broker as broker_module

    def missing():
        raise broker_module.MosquittoError("not found")

    monkeypatch.setattr(broker_module, "find_mosquitto", missing)
    monkeypatch.setattr(broker_module, "find_amqtt", lambda: "/usr/bin/amqtt")
    broker = broker_module.private_broker(12345, new_session=True)
    assert type(broker) is broker_module.Amqtt and broker.port == 12345


def test_amqtt_broker_runs_a_round_trip():
    """The fallback broker really brokers (skipped where amqtt is not installed)."""
    import socket

    import ate.broker as broker_module

    try:
        broker_module.find_amqtt()
    except broker_module.MosquittoError:
        pytest.skip("amqtt not installed")
    broker = broker_module.Amqtt().start()
    try:
        with socket.create_connection((broker.host, broker.port), 5) as s:
            cid = b"ate-test"
            body = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(cid).to_bytes(2, "big") + cid
            s.sendall(bytes([0x10, len(body)]) + body)
            assert s.recv(4) == b"\x20\x02\x00\x00"  # CONNACK, accepted
    finally:
        broker.cleanup()
    assert not broker.running


def test_no_broker_one_line_error(monkeypatch, capsys, tmp_path):
    import ate.broker as broker_module
    from ate.demo import makeService

    def missing():
        raise broker_module.MosquittoError("not found")

    monkeypatch.setattr(broker_module, "find_mosquitto", missing)
    monkeypatch.setattr(broker_module, "find_amqtt", missing)
    with pytest.raises(SystemExit) as exc:
        makeService(parse("--stdf-dir", str(tmp_path / "d")), reactor=MemoryReactorClock())
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "apt-get install -y mosquitto" in err
    assert not (tmp_path / "d").exists()


def test_failed_assembly_leaves_no_work_directory(monkeypatch, tmp_path):
    import ate.demo
    from ate.broker import Mosquitto

    work = tmp_path / "work"

    def mkdtemp(prefix=""):
        work.mkdir()
        return str(work)

    monkeypatch.setattr(ate.demo.tempfile, "mkdtemp", mkdtemp)
    opts = parse("--stdf-dir", str(tmp_path / "d"))
    with pytest.raises(AttributeError):     # a reactor without a thread pool
        ate.demo.build_demo(opts, MemoryReactorClock(), Mosquitto(port=free_port()),
                            observe_logs=False)
    assert not work.exists()


# --------------------------------------------------------------------------------------
# --lots, --keep-lots, the temporary datalog directory, the console log level


def run_demo(tmp_path, *args, timeout=120):
    """Run ate-demo to its end (``--lots``); returns (exit status, output)."""
    out_path = tmp_path / "demo.out"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(TWISTD + ["-n", "--pidfile=", "ate-demo", *args],
                                cwd=str(tmp_path / "cwd"), env=env(), stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(10)
        pytest.fail(f"ate-demo {args} did not end by itself; output:\n"
                    f"{out_path.read_text(errors='replace')}")
    return code, out_path.read_text(errors="replace")


def startup_line(text: str) -> str:
    (line,) = [ln for ln in text.splitlines() if f"ate-demo {ate.__version__}: open " in ln]
    return line


def test_lots_ends_the_demo_with_no_warning_and_keeps_the_last_lots(tmp_path):
    """A healthy run (--healthy: no drifting site; default test time and strategy delay) of
    4 lots: exit 0, no WARNING (nor DEBUG: the console shows INFO and above), the URL once
    with the real port of --web-port 0, and only the last --keep-lots 2 lots in --stdf-dir."""
    (tmp_path / "cwd").mkdir()
    stdf = tmp_path / "stdf"
    code, text = run_demo(tmp_path, "--lots", "4", "--keep-lots", "2", "--parts-per-lot", "40",
                          "--web-port", "0", "--stdf-dir", str(stdf), "--healthy")
    assert code == 0, text
    for marker in ("#warn]", "#error]", "#critical]", "#debug]", "Traceback"):
        assert marker not in text, (marker, text)
    line = startup_line(text)
    port = int(re.search(r"open http://127\.0\.0\.1:(\d+)/ ;", line).group(1))
    assert port != 0 and text.count(f"http://127.0.0.1:{port}/") == 1
    assert f"datalogs in {stdf} (the last 2 lots kept)" in line
    assert "removed at exit" not in line and "simulated fault" not in line
    assert "4 lot(s) done, stopping" in text
    lots = sorted(glob.glob(str(stdf / "*.stdf")))
    assert len(lots) == 2, os.listdir(stdf)
    for path in lots:
        kinds = record_kinds(path)
        assert kinds[0] == FAR and kinds[-1] == MRR
        base = path[:-len(".stdf")]
        assert os.path.isfile(base + ".summary.json") and os.path.isfile(base + ".summary.txt")
    assert len(glob.glob(str(stdf / "*.summary.*"))) == 4
    assert os.listdir(tmp_path / "cwd") == []      # nothing written where it was started


def test_the_default_demo_fires_an_alarm_in_its_second_lot(tmp_path):
    """The default demo (no --fault, no --healthy) of 2 lots of 200 parts: the first lot is
    healthy, with no alarm and no WARNING; in the second the last site drifts and the
    divergence alarm names it: one WARNING, a DTR after the PRRs of the part that fired it,
    the lot summary.  The simulated sites are seeded (one random stream per site), so these
    lots are the same every run."""
    from ate.demo import LotPruner

    (tmp_path / "cwd").mkdir()
    stdf = tmp_path / "stdf"
    code, text = run_demo(tmp_path, "--lots", "2", "--parts-per-lot", "200", "--test-time", "0",
                          "--web-port", "0", "--stdf-dir", str(stdf), "--keep-lots", "0")
    assert code == 0, text
    assert ("simulated fault drift:site=3,after=50,yield=40 (the last site drifts from lot 2 "
            "on; --healthy: none)") in startup_line(text)
    first, second = LotPruner(str(stdf), keep=0).lots()          # oldest first
    summaries = []
    for base in (first, second):
        with open(base + ".summary.json", encoding="utf-8") as f:
            summaries.append(json.load(f))
    assert summaries[0]["alarms"] == [] and summaries[0]["parts_tested"] == 200
    [alarm] = summaries[1]["alarms"]
    assert (alarm["name"], alarm["kind"], alarm["action"], alarm["site"], alarm["state"]) == (
        "site_divergence", "site_divergence", "notify", "3", "raised")
    # all four sites need 30 parts (min_parts) before the rule looks: part 120 at the soonest
    assert alarm["message"].startswith("site 3 yield ") and 120 <= alarm["parts"] <= 200
    assert summaries[1]["ended_held"] is False and summaries[1]["parts_tested"] == 200
    warnings = [ln for ln in text.splitlines() if "#warn]" in ln]
    assert len(warnings) == 1, text
    assert warnings[0].endswith(f"[ate.master.alarming.LotAlarms#warn] alarm site_divergence: "
                                f"{alarm['message']}"), warnings
    for marker in ("#error]", "#critical]", "Traceback"):
        assert marker not in text, (marker, text)
    stream = [(name, r["TEXT_DAT"] if name == "DTR" else name)
              for name, r in read_stdf(second + ".stdf") if name in ("PRR", "DTR")]
    at = stream.index(("DTR", f"ALARM site_divergence: {alarm['message']}"))
    prrs_before = stream[:at].count(("PRR", "PRR"))
    assert prrs_before % 4 == 0 and prrs_before - 4 < alarm["parts"] <= prrs_before
    assert [name for name, _ in stream].count("DTR") == 1


def test_default_datalog_directory_is_temporary_and_verbose_shows_debug(tmp_path):
    (tmp_path / "cwd").mkdir()
    code, text = run_demo(tmp_path, "--lots", "1", "--parts-per-lot", "8", "--test-time",
                          "0.01", "--web-port", "0", "--verbose")
    assert code == 0, text
    line = startup_line(text)
    where = re.search(r"datalogs in (\S+) \(the last 20 lots kept\), removed at exit "
                      r"\(--stdf-dir DIR keeps them\)", line)
    assert where, line
    directory = where.group(1)
    assert directory.startswith(os.path.realpath(tempfile.gettempdir())) or \
        directory.startswith(tempfile.gettempdir())
    assert f"datalog {directory}/" in text          # a lot was written there ...
    assert not os.path.exists(directory)            # ... and removed at exit
    assert os.listdir(tmp_path / "cwd") == []
    assert "#debug]" in text                        # --verbose


def test_lot_pruner_keeps_the_newest_lots_of_the_demo_only(tmp_path):
    from ate.demo import LotPruner

    prefix = "306426.001_SCT-81-1F_"
    for i in range(5):
        base = tmp_path / f"{prefix}2026010{i}-000000"
        for suffix in (".stdf", ".summary.json", ".summary.txt"):
            path = base.with_name(base.name + suffix)
            path.write_text("x")
            os.utime(path, (1000 + i, 1000 + i))
    (tmp_path / "other.stdf").write_text("not the demo's")
    pruner = LotPruner(str(tmp_path), keep=2)
    pruner("part", None)                            # only a finalised datalog prunes
    assert len(os.listdir(tmp_path)) == 16
    pruner("finalised", "x")
    left = sorted(os.listdir(tmp_path))
    assert left == sorted([f"{prefix}2026010{i}-000000{s}" for i in (3, 4)
                           for s in (".stdf", ".summary.json", ".summary.txt")]
                          + ["other.stdf"])
    assert LotPruner(str(tmp_path), keep=0).prune() == []   # 0 keeps all


def test_filter_console_wraps_all_observers_but_the_excluded():
    from twisted.logger import Logger, LogLevel, LogPublisher

    from ate.demo import filter_console

    publisher = LogPublisher()
    seen, ours = [], []
    mine = ours.append
    publisher.addObserver(seen.append)
    publisher.addObserver(mine)
    assert filter_console(LogLevel.info, exclude=(mine,), publisher=publisher) == 1
    assert filter_console(LogLevel.info, exclude=(mine,), publisher=publisher) == 0
    log = Logger(namespace="t", observer=publisher)
    log.debug("hidden")
    log.info("shown")
    assert [e["log_format"] for e in seen] == ["shown"]
    assert [e["log_format"] for e in ours] == ["hidden", "shown"]


def test_amqtt_is_found_next_to_python_without_path(monkeypatch):
    """The venv's amqtt is found with the venv not activated (PATH without its bin)."""
    import importlib.util

    import ate.broker as broker_module

    if importlib.util.find_spec("amqtt") is None:
        pytest.skip("amqtt is not installed in this Python")
    beside = os.path.join(os.path.dirname(sys.executable), "amqtt")
    if not os.access(beside, os.X_OK):
        pytest.skip(f"amqtt's command is not next to {sys.executable}")
    monkeypatch.setenv("PATH", "/nonexistent")
    assert broker_module.find_amqtt() == beside
