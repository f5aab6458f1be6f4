"""ate-handler end to end: line driver over TCP and a pty, and one handler with
two (fake) masters on a private mosquitto, including one master crashing."""

from __future__ import annotations

import json
import os

import pytest
import pytest_twisted
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineReceiver

from ate.broker import free_port
from ate.config import MqttOptions, handler_config_from_dict
from ate.handler import lineproto as lp
from ate.handler.drivers.line import LineDriver, SerialOptions
from ate.handler.drivers.simulated import SimulatedHandler, SimulatedHandlerFactory
from ate.handler.machine import HandlerController, HandlerSettings
from ate.handler.service import HandlerService
from ate.mqtt.service import MqttService
from ate.protocol import messages as m
from tests.waiting import Waiter as _Waiter

TIMEOUT = 20
H, A, B = "HTO92-20F", "SCT-A", "SCT-B"


class Waiter(_Waiter):
    timeout = TIMEOUT


class RecordingSink(Waiter):
    def __init__(self):
        super().__init__()
        self.requests = []

    def line_request(self, req):
        self.requests.append(req)
        self.poke()


class DeviceClient(LineReceiver, Waiter):
    """A raw line client standing for the handler device."""

    delimiter = b"\n"

    def __init__(self):
        Waiter.__init__(self)
        self.lines = []

    def lineReceived(self, line):
        self.lines.append(line.decode("ascii"))
        self.poke()


# --------------------------------------------------------------------------
# line driver over loopback TCP


@pytest_twisted.ensureDeferred
async def test_line_driver_tcp_good_and_bad_frames(reactor):
    sink = RecordingSink()
    port = free_port()
    driver = LineDriver(reactor, sink, server=f"tcp:{port}:interface=127.0.0.1")
    driver.startService()
    try:
        client = DeviceClient()
        await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(
            Factory.forProtocol(lambda: client))
        await driver.whenConnected().addTimeout(TIMEOUT, reactor)
        client.sendLine(b"LL|306426.001|HS2C|25|243")
        client.sendLine(b"just noise")                 # ignored
        client.sendLine(b"LE|")                        # truncated: ignored
        for _ in range(4):                             # more than 3 in a row
            client.sendLine(b"LE|014")
        client.sendLine(b"XX|1|" + b"%03d" % lp.checksum("XX|1|"))
        client.sendLine(b"LL|1|2|" + b"%03d" % lp.checksum("LL|1|2|"))
        client.sendLine(b"LE|13\r")                    # still reading
        await sink.until(lambda: len(sink.requests) == 2, reactor)
        await client.until(lambda: len(client.lines) == 6, reactor)
        assert sink.requests == [lp.LoadLot("306426.001", "HS2C", "25"), lp.LotEnd()]
        cs_error = lp.frame(["TS", "-1", "checksum error"])
        not_implemented = "TS|-99|Not Implemented|"
        assert client.lines[:5] == [cs_error] * 4 + [
            not_implemented + "%03d" % lp.checksum(not_implemented)]
        assert client.lines[5] == lp.frame(["TS", "-1", "LL needs 3 field(s), got 2"])
        assert driver.errors == 6
        assert driver.protocol.errors_in_row == 0      # reset by the good LE
        driver.send(lp.TS_OK)
        await client.until(lambda: client.lines[-1] == "TS|0|OK|229", reactor)
    finally:
        await driver.stopService()


@pytest_twisted.ensureDeferred
async def test_simulated_device_over_tcp_against_controller(reactor):
    """The simulated device as a TCP line peer; the controller with fake masters."""
    device = SimulatedHandler(reactor, lots=("L1",), parts_per_lot=6, sites=2, index_time=0)
    port = free_port()
    listening = await TCP4ServerEndpoint(reactor, port, interface="127.0.0.1").listen(
        SimulatedHandlerFactory(device, autostart=False))

    class Bus:
        def __init__(self):
            self.ctl = None

        def command(self, d, msg):
            reactor.callLater(0, self.answer, d, msg)

        def answer(self, d, msg):
            if isinstance(msg, m.Load):
                self.ctl.master_status(d, "ready")
            elif isinstance(msg, m.Next):
                self.ctl.master_response(d, m.NextResponse(tuple(
                    m.NextResult(s.siteid, s.partid, 1, 0, 0) for s in msg.sites)))
                self.ctl.master_status(d, "ready")
            elif isinstance(msg, m.Unload):
                self.ctl.master_status(d, "initialized")

        def handler_status(self, state, message):
            pass

        def handler_response(self, payload):
            pass

    bus = Bus()
    ctl = HandlerController(reactor, HandlerSettings(device_ids=(A,), site_layout=((0, 0), (1, 0))),
                            bus)
    bus.ctl = ctl
    class Forward(RecordingSink):
        def line_request(self, req):
            ctl.line_request(req)
            super().line_request(req)

    waiter = Forward()
    driver = LineDriver(reactor, waiter, client=f"tcp:127.0.0.1:{port}")
    ctl.attach(driver)
    ctl.mqtt_connected()
    ctl.master_status(A, "initialized")
    driver.startService()
    try:
        await driver.whenConnected().addTimeout(TIMEOUT, reactor)
        device.start()
        await device.wait_lots(1).addTimeout(TIMEOUT, reactor)
        assert device.parts_tested == 6
        assert [b for _, _, b in device.results] == [1] * 6
        assert device.errors == [] and device.bad_lines == 0
        ctl.master_request(A, m.HandlerCommand("identify", {}))  # ID?, and the device answers
        await waiter.until(lambda: ctl.status().device_name == "SIM-HANDLER", reactor)
    finally:
        device.stop()
        await driver.stopService()
        await listening.stopListening()


# --------------------------------------------------------------------------
# line driver over a pty (twisted serialport)


class PtyReader:
    """Reads the master side of a pty on the reactor."""

    def __init__(self, fd, waiter):
        self.fd = fd
        self.waiter = waiter
        self.data = b""

    def fileno(self):
        return self.fd

    def doRead(self):
        try:
            self.data += os.read(self.fd, 4096)
        except OSError:
            return
        self.waiter.poke()

    def logPrefix(self):
        return "pty"

    def connectionLost(self, reason):
        pass


@pytest_twisted.ensureDeferred
async def test_line_driver_over_pty_serialport(reactor):
    pytest.importorskip("serial")
    import tty

    master, slave = os.openpty()
    tty.setraw(master)
    name = os.ttyname(slave)
    sink = RecordingSink()
    driver = LineDriver(reactor, sink, serial=SerialOptions(name, baudrate=115200))
    reader = PtyReader(master, sink)
    reactor.addReader(reader)
    driver.startService()
    try:
        os.write(master, b"ID?|072\nLE|099\nLL|306426.001|HS2C|25|243\n")
        await sink.until(lambda: len(sink.requests) == 2, reactor)
        assert sink.requests == [lp.IdentifyQuery(), lp.LoadLot("306426.001", "HS2C", "25")]
        await sink.until(lambda: b"\n" in reader.data, reactor)
        assert reader.data.split(b"\n")[0].strip() == lp.frame(
            ["TS", "-1", "checksum error"]).encode()
        driver.send(lp.TesterName("SCT-81-1F"))
        await sink.until(lambda: b"ID|SCT-81-1F|169\n" in reader.data, reactor)
    finally:
        reactor.removeReader(reader)
        driver.stopService()
        os.close(master)
        os.close(slave)


# --------------------------------------------------------------------------
# one handler, two masters, one broker


class FakeMaster(Waiter):
    """A minimal master on MQTT: answers load/next/unload/identify per protocol."""

    def __init__(self, reactor, broker, device_id, binning):
        super().__init__()
        self.reactor = reactor
        self.device_id = device_id
        self.binning = binning
        self.state = "initialized"
        self.commands = []
        base = f"ate/{device_id}"
        self.status_topic = f"{base}/Master/status"
        self.response_topic = f"{base}/Master/response"
        crash = json.dumps({"type": "status", "interface_version": 1, "state": "crash",
                            "payload": {"state": "crash", "message": ""}}).encode()
        self.mqtt = MqttService(
            reactor, MqttOptions(host=broker.host, port=broker.port), f"masterapp.{device_id}",
            will=(self.status_topic, crash, 2),
            subscriptions=[(f"{base}/Master/cmd", 2), (f"ate/{H}/Handler/status", 2)],
            on_message=self._message, on_connected=self._publish_state,
            backoff=(60.0, 60.0))

    def _publish(self, topic, obj):
        self.mqtt.publish(topic, json.dumps(obj).encode(), 2)

    def _publish_state(self):
        self._publish(self.status_topic, {"type": "status", "interface_version": 1,
                                          "state": self.state,
                                          "payload": {"state": self.state, "message": ""}})

    def _go(self, state):
        self.state = state
        self._publish_state()

    def _message(self, topic, payload):
        msg = json.loads(payload)
        if topic.endswith("Handler/status"):
            if msg["payload"]["state"] == "connecting":
                self._publish_state()
            return
        self.commands.append((msg["type"], msg["payload"]))
        kind = msg["type"]
        if kind == "load" and self.state == "initialized":
            self._go("loading")
            self._go("ready")
        elif kind == "next" and self.state == "ready":
            self._go("testing")
            sites = [{"siteid": s["siteid"], "partid": s["partid"], "binning": self.binning,
                      "logflag": 0, "additionalinfo": 0} for s in msg["payload"]["sites"]]
            self._publish(self.response_topic, {"type": "next", "payload": {"sites": sites}})
            self._go("ready")
        elif kind == "unload" and self.state == "ready":
            self._go("unloading")
            self._go("initialized")
        elif kind == "identify":
            self._publish(self.response_topic, {"type": "identify",
                                                "payload": {"name": self.device_id}})
        self.poke()

    def crash(self):
        """Drop the socket without DISCONNECT: the broker publishes the will."""
        self.mqtt._link.abort()

    def sites_tested(self):
        return [s["siteid"] for kind, p in self.commands if kind == "next" for s in p["sites"]]


class StatusWatcher(Waiter):
    def __init__(self, reactor, broker):
        super().__init__()
        self.statuses = []
        self.mqtt = MqttService(
            reactor, MqttOptions(host=broker.host, port=broker.port), "it.watcher",
            subscriptions=[(f"ate/{H}/Handler/status", 2)], on_message=self._message)

    def _message(self, topic, payload):
        p = json.loads(payload)["payload"]
        self.statuses.append((p["state"], p["message"]))
        self.poke()


def handler_config(broker):
    return handler_config_from_dict({
        "broker_host": broker.host, "broker_port": broker.port,
        "handler_type": "simulated", "handler_id": H, "device_ids": [A, B],
        "site_layout": [[0, 0], [1, 0], [0, 1], [1, 1]],
        "site_map": [[A, "0"], [A, "1"], [B, "0"], [B, "1"]],
    }, source="test")


async def start_cell(reactor, broker, device):
    watcher = StatusWatcher(reactor, broker)
    watcher.mqtt.startService()
    await watcher.mqtt.whenConnected().addTimeout(TIMEOUT, reactor)
    masters = [FakeMaster(reactor, broker, A, 1), FakeMaster(reactor, broker, B, 5)]
    for master in masters:
        master.mqtt.startService()
        await master.mqtt.whenConnected().addTimeout(TIMEOUT, reactor)
    handler = HandlerService(reactor, handler_config(broker), device=device)
    handler.startService()
    return watcher, masters, handler


async def stop_cell(watcher, masters, handler):
    await handler.stopService()
    for master in masters:
        if master.mqtt.running:
            await master.mqtt.stopService()
    await watcher.mqtt.stopService()


@pytest_twisted.ensureDeferred
async def test_one_handler_two_masters_run_lots(reactor, broker):
    device = SimulatedHandler(reactor, lots=("L1", "L2"), parts_per_lot=8, sites=4,
                              index_time=0, retry_time=0.2)
    watcher, (ma, mb), handler = await start_cell(reactor, broker, device)
    try:
        await device.wait_lots(2).addTimeout(TIMEOUT, reactor)
        assert device.parts_tested == 16
        # handler sites 0,1 -> A sites 0,1 (bin 1); handler sites 2,3 -> B (bin 5)
        per_st = [b for _, _, b in device.results]
        assert per_st == [1, 1, 5, 5] * 4
        assert ma.sites_tested() == ["0", "1"] * 4 and mb.sites_tested() == ["0", "1"] * 4
        for m in (ma, mb):
            kinds = [k for k, _ in m.commands]
            assert kinds.count("load") == 2 and kinds.count("unload") == 2
            assert kinds[0] == "site-layout"
        assert handler.controller.status().state == "initialized"
        assert ("connecting", "") in watcher.statuses
    finally:
        await stop_cell(watcher, [ma, mb], handler)


@pytest_twisted.ensureDeferred
async def test_one_master_crashing_leaves_the_other_running(reactor, broker):
    device = SimulatedHandler(reactor, lots=("L1",), parts_per_lot=10_000, sites=4,
                              index_time=0, retry_time=0.2)
    watcher, (ma, mb), handler = await start_cell(reactor, broker, device)
    try:
        await device.wait_parts(8).addTimeout(TIMEOUT, reactor)
        errors_before = len(device.errors)
        mb.crash()
        await mb.mqtt.stopService()
        await watcher.until(lambda: any("SCT-B reported crash" in m
                                        for _, m in watcher.statuses), reactor)
        assert handler.controller.status().excluded == {B: "master SCT-B reported crash"}
        # the operator disables the sites of the crashed tester; A goes on
        device.disable_site(2)
        device.disable_site(3)
        before = device.parts_tested
        a_before = len(ma.sites_tested())
        await device.wait_parts(before + 10).addTimeout(TIMEOUT, reactor)
        assert len(ma.sites_tested()) >= a_before + 10
        assert handler.controller.status().state in ("ready", "testing")
        assert all(state != "error" for state, _ in watcher.statuses)
        # every refusal the device saw names the crashed tester
        assert all("SCT-B" in ts.text for ts in device.errors[errors_before:])
    finally:
        device.stop()
        await stop_cell(watcher, [ma, mb], handler)


# --------------------------------------------------------------------------
# twistd options


def test_tap_options_and_make_service(tmp_path):
    from twisted.internet.testing import MemoryReactorClock
    from twisted.python import usage

    from ate.handler.tap import Options, makeService

    cfg = tmp_path / "handler_config_file.json"
    cfg.write_text(json.dumps({
        "broker_host": "127.0.0.1", "broker_port": 1883, "handler_type": "geringer",
        "handler_id": H, "device_ids": [A], "site_layout": [[0, 0]]}))
    opts = Options()
    opts.parseOptions(["--config", str(cfg), "--broker", "127.0.0.1:1999", "--parity", "e",
                       "/dev/ttyUSB0"])
    assert opts["serial"] == SerialOptions("/dev/ttyUSB0", parity="E")
    assert opts["handler_config"].broker.port == 1999
    service = makeService(opts, reactor=MemoryReactorClock())
    assert service.driver.serial == opts["serial"]
    # the MQTT service is a child of the handler service, built from the --broker override
    assert service.mqtt.parent is service
    assert service.mqtt._options.port == 1999
    assert service.mqtt._client_id == f"handler.{H}"
    with pytest.raises(usage.UsageError, match="no handler device"):
        Options().parseOptions(["--config", str(cfg)])
    with pytest.raises(usage.UsageError, match="--bytesize: must be 5, 6, 7 or 8"):
        Options().parseOptions(["--config", str(cfg), "--bytesize", "9", "/dev/x"])
