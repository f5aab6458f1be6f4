"""``twistd -n ate-demo`` as a subprocess: parts flow, SIGTERM exits 0, every datalog is
complete; and its options."""

from __future__ import annotations

import glob
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage

from ate.stdf.records import iter_records
from ate.testing.broker import free_port

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
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
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
             "-n", "--pidfile=", "ate-demo", "--port", str(port), "--stdf-dir", str(stdf),
             "--test-time", "0.01", "--parts-per-lot", "30"],
            cwd=str(tmp_path), env=env, stdin=subprocess.DEVNULL, stdout=out,
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
        assert f"ate-demo: open http://127.0.0.1:{port}/\n" in text
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
    assert (opts["sites"], opts["test-time"], opts["parts-per-lot"], opts["port"],
            opts["stdf-dir"], opts["lots"], opts["faults"]) == (
        4, 0.05, 200, 8081, "./demo-stdf", 0, {})
    opts = parse("--sites", "8", "--fault", "crash_on_part=50,slow_load=0.5",
                 "--fault", "fault_site=3", "--lots", "2")
    assert opts["sites"] == 8 and opts["lots"] == 2
    assert opts["faults"] == {"crash_on_part": 50, "slow_load": 0.5, "fault_site": "3"}
    with pytest.raises(usage.UsageError, match="NAME one of"):
        parse("--fault", "explode=3")
    with pytest.raises(usage.UsageError, match="faults.crash_on_part"):
        parse("--fault", "crash_on_part=0")
    with pytest.raises(usage.UsageError, match="faults.fault_site"):
        parse("--fault", "fault_site=9")           # not one of the 4 sites
    with pytest.raises(usage.UsageError, match="--sites"):
        parse("--sites", "0")


def test_make_service_order_and_configs(tmp_path):
    from ate.demo import build_demo, DemoHandler
    from ate.testing.broker import Mosquitto

    opts = parse("--sites", "2", "--stdf-dir", str(tmp_path / "d"), "--port", "18999",
                 "--fault", "crash_on_part=5", "--lots", "3")
    broker = Mosquitto(port=free_port())   # not started
    clock = MemoryReactorClock()
    clock.getThreadPool = lambda: None     # build_master asks for it; unused here
    top, parts = build_demo(opts, clock, broker, observe_logs=False)
    try:
        names = [type(s).__name__ for s in top]
        assert names == ["BrokerService", "MultiService", "SimSitesService", "HandlerService",
                         "ReportService"]
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
    import ate.testing.broker as broker_module

    def missing():
        raise broker_module.MosquittoError("not found")

    monkeypatch.setattr(broker_module, "find_mosquitto", missing)
    monkeypatch.setattr(broker_module, "find_amqtt", lambda: "/usr/bin/amqtt")
    broker = broker_module.private_broker(12345, new_session=True)
    assert type(broker) is broker_module.Amqtt and broker.port == 12345


def test_amqtt_broker_runs_a_round_trip():
    """The fallback broker really brokers (skipped where amqtt is not installed)."""
    import socket

    import ate.testing.broker as broker_module

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
    import ate.testing.broker as broker_module
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
    from ate.testing.broker import Mosquitto

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
