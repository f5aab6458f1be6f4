#!/usr/bin/env python3
"""The master's memory under hostile input (issue 11, item 4), as a real process.

    python bench/abuse_rss.py [--tree DIR] [--mb 1] [--count 400]

Starts a private mosquitto and ``twistd -n ate-master`` (from the checkout, or from
``--tree``, e.g. an older tree unpacked with ``git archive``), then, one step at a time,
and prints the master's resident memory (VmRSS, and the peak VmHWM) after each:

1. ``--count`` remote log lines of ``--mb`` MB each (``~/TestApp/log/site0``);
2. ``--count`` unexpected test results with a ``--mb`` MB field (no part under test: the
   master logs each one and ignores it);
3. one ``getlogs`` over the websocket (the reply's size is printed too);
4. one websocket frame announcing 1 GiB, followed by up to 256 MiB of it;
5. one 64 MiB MQTT message on a subscribed topic.

Each step waits until the master has handled its input (its log or its counters say so),
then 2 s more.  Everything runs on 127.0.0.1; the broker and the master are stopped by PID.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import paho.mqtt.client as paho  # noqa: E402

from ate.broker import Mosquitto, free_port  # noqa: E402

DEVICE = "RSS-1"
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "jobs", "le306426001.xml")


def rss(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of ``pid`` in MB."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


def http(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=60) as r:
        return r.read()


def metric(port: int, name: str) -> float:
    for line in http(port, "/metrics").decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def wait(what, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for the master ({what.__doc__})")
        time.sleep(0.2)


class WebSocket:
    """A minimal client: handshake, masked text frames, reading whole messages."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                           "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
                          .encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.sock.recv(65536)
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise SystemExit(f"websocket upgrade refused: {head[:200]!r}")

    def send_text(self, text: str) -> None:
        data = text.encode()
        mask = os.urandom(4)
        n = len(data)
        header = b"\x81" + (bytes((0x80 | n,)) if n < 126 else b"\xfe" + struct.pack("!H", n))
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def _exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise EOFError
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def message(self) -> bytes:
        b0, b1 = self._exact(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._exact(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._exact(8))[0]
        return self._exact(n)

    def message_of(self, kind: str) -> bytes:
        while True:
            data = self.message()
            if json.loads(data).get("type") == kind:
                return data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tree", default=ROOT, help="the ate-master tree to run")
    ap.add_argument("--mb", type=float, default=1.0, help="MB per hostile string")
    ap.add_argument("--count", type=int, default=400, help="messages per step")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="ate-rss-")
    broker = Mosquitto()
    broker.start()
    master = None
    try:
        jobs = os.path.join(work, "jobs")
        os.makedirs(jobs)
        shutil.copy(FIXTURE, jobs)
        web = free_port()
        cfg = {
            "broker_host": broker.host, "broker_port": broker.port, "device_id": DEVICE,
            "sites": ["0"], "Handler": "H1", "environment": "F1",
            "webui_host": "127.0.0.1", "webui_port": web, "jobsource": "filesystem",
            "jobformat": "xml.semi-ate", "filesystemdatasource_path": jobs,
            "filesystemdatasource_jobpattern": "le#jobname#.xml", "site_layout": [[0, 0]],
            "stdf_directory": work, "log_directory": os.path.join(work, "log"),
            "loglevel": 20,
        }
        path = os.path.join(work, "master.json")
        with open(path, "w") as f:
            json.dump(cfg, f)
        env = dict(os.environ, PYTHONPATH=os.path.abspath(args.tree))
        master = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
             "--pidfile=", "ate-master", "--config", path],
            cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def up():
            "web up and MQTT connected"
            try:
                return metric(web, "ate_mqtt_connected") == 1
            except OSError:
                return False

        wait(up, 60)
        time.sleep(2)
        rows = [("idle", *rss(master.pid), "")]

        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="rss.feeder")
        client.connect(broker.host, broker.port)
        client.loop_start()
        size = int(args.mb * 1024 * 1024)
        blob = "x" * size

        def publish(topic: str, payload: bytes) -> None:
            client.publish(f"ate/{DEVICE}/{topic}", payload, qos=1).wait_for_publish(60)

        for i in range(args.count):
            publish("TestApp/log/site0", json.dumps(
                {"type": "log", "payload": f"testapp 0|d|INFO|line-{i} {blob}"}).encode())

        def logged():
            "the last remote line in the log"
            entries = json.loads(http(web, "/api/v1/logs?limit=5"))["logs"]
            return any(f"line-{args.count - 1} " in e["description"] for e in entries)

        wait(logged)
        time.sleep(2)
        rows.append((f"{args.count} log lines of {args.mb:g} MB", *rss(master.pid), ""))

        record = {"type": "PRR", "HEAD_NUM": 0, "SITE_NUM": 0, "PART_FLG": 0, "NUM_TEST": 1,
                  "HARD_BIN": 1, "SOFT_BIN": 1, "PART_ID": "P", "PART_TXT": blob}
        payload = json.dumps({"type": "testresult", "payload": [record]}).encode()
        before = metric(web, "ate_unexpected_results_total")
        for _ in range(args.count):
            publish("TestApp/testresult/site0", payload)

        def counted():
            "every unexpected result counted"
            return metric(web, "ate_unexpected_results_total") >= before + args.count

        wait(counted)
        time.sleep(2)
        rows.append((f"{args.count} unexpected results of {args.mb:g} MB", *rss(master.pid),
                     ""))

        ws = WebSocket(web)
        ws.message_of("status")
        ws.send_text(json.dumps({"type": "cmd", "command": "getlogs"}))
        try:
            note = f"reply {len(ws.message_of('logs')) / 1e6:.1f} MB"
        except (OSError, EOFError) as e:
            note = f"no reply, the connection was dropped ({e.__class__.__name__})"
        time.sleep(2)
        rows.append(("one getlogs", *rss(master.pid), note))
        ws.sock.close()

        ws = WebSocket(web)
        ws.message_of("status")
        sent = 0
        ws.sock.sendall(b"\x81\xff" + struct.pack("!Q", 1 << 30) + b"mask")
        chunk = b"y" * (1 << 20)
        try:
            while sent < 256 * (1 << 20):
                ws.sock.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass
        ws.sock.close()
        time.sleep(2)
        rows.append(("1 GiB websocket frame", *rss(master.pid),
                     f"{sent / (1 << 20):.0f} MiB accepted before the close"))

        big = json.dumps({"type": "log", "payload": "testapp 0|d|INFO|big " + "z" * (64 << 20)})
        publish("TestApp/log/site0", big.encode())
        publish("TestApp/log/site0", json.dumps(
            {"type": "log", "payload": "testapp 0|d|INFO|after-big"}).encode())

        def after():
            "the line after the 64 MiB message"
            entries = json.loads(http(web, "/api/v1/logs?limit=5"))["logs"]
            return any("after-big" in e["description"] for e in entries)

        wait(after)
        time.sleep(2)
        rows.append(("64 MiB MQTT message", *rss(master.pid), ""))
        client.loop_stop()
        client.disconnect()
    finally:
        if master is not None and master.poll() is None:
            os.kill(master.pid, signal.SIGTERM)
            try:
                master.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(master.pid, signal.SIGKILL)
                master.wait()
        broker.stop()
        broker.cleanup()
        shutil.rmtree(work, ignore_errors=True)

    print(f"tree: {os.path.abspath(args.tree)}")
    print(f"{'after':<40} {'RSS MB':>8} {'peak MB':>8}")
    for name, now, peak, note in rows:
        print(f"{name:<40} {now:8.0f} {peak:8.0f}  {note}")


if __name__ == "__main__":
    main()
