#!/usr/bin/env python3
"""What a broker crash loses, by broker and session settings (README "Broker loss").

    python bench/blip.py [--trials 5] [--down 2.0] [--rate 20] [--master-lag 0.5]

A "TestApp" paho client publishes numbered QoS 2 messages (results, statuses and log lines
are all QoS 2) at ``--rate`` per second to a "master" paho client; the Semi-ATE apps are
paho clients, and paho keeps QoS > 0 publishes made while it is offline and sends them
after its reconnect.  One second into each trial the private mosquitto is killed -9 and
restarted on the same port ``--down`` seconds later.  Both clients reconnect by themselves
(1 s, doubling, as ate-master does; the master's first delay is ``--master-lag`` s longer,
so with a lag the TestApp is back first and flushes its queue before the master has
subscribed again) and the "master" subscribes on every connect, as ate-master does.
Publishing goes on during the outage and for 5 s after it, then the "master" drains.
Reported per setting: messages lost per crash (mean and worst over the trials),
duplicates, and the delivery latency p50/p99 in steady state (what the setting costs).
Settings:

* clean session or persistent sessions (``clean_session false`` on both clients);
* the master's subscription QoS, 0 or 2;
* mosquitto ``persistence false``, ``persistence true`` (default autosave, every 30 min),
  or ``persistence true`` with ``autosave_on_changes true`` and ``autosave_interval 1``
  (the database written after every change, so that a kill -9 loses as little as
  possible);
* mosquitto ``max_inflight_messages`` 20 (its default) or 1000: a client that comes back
  with more than 20 queued QoS 2 messages sends them all at once (paho does), and
  mosquitto 2.0 drops those beyond its window without a word.

A fresh broker (and database) per trial.  Everything on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import paho.mqtt.client as paho  # noqa: E402

from ate.broker import Mosquitto  # noqa: E402

TOPIC = "ate/BLIP/TestApp/testresult/site0"

PERSISTENCE = {
    "off": [],
    "on": ["persistence true", "autosave_interval 1800"],
    "every change": ["persistence true", "autosave_on_changes true", "autosave_interval 1"],
}

SETTINGS = [  # (session, master subscription QoS, persistence, broker max_inflight_messages)
    ("clean", 0, "off", 20),
    ("clean", 2, "off", 20),
    ("clean", 2, "off", 1000),
    ("clean", 2, "every change", 1000),
    ("persistent", 2, "off", 1000),
    ("persistent", 2, "on", 1000),
    ("persistent", 2, "every change", 20),
    ("persistent", 2, "every change", 1000),
    ("persistent", 0, "every change", 1000),
]


class Peer:
    """One paho client on its own network thread, reconnecting by itself."""

    def __init__(self, client_id: str, port: int, clean: bool, subscribe_qos: int | None,
                 lag: float = 0.0):
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  clean_session=clean, protocol=paho.MQTTv311)
        self.client.reconnect_delay_set(1 + lag, 30)
        self.client.max_queued_messages_set(0)  # unlimited offline queue
        self.subscribe_qos = subscribe_qos
        self.port = port
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.lock = threading.Lock()
        self.seen: dict[int, int] = {}
        self.latency: list[float] = []
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *a: self.connected.clear()
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = self._on_message

    def start(self) -> None:
        self.client.connect("127.0.0.1", self.port, keepalive=10)
        self.client.loop_start()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        if reason.is_failure:
            return
        self.connected.set()
        if self.subscribe_qos is not None:
            client.subscribe(TOPIC, self.subscribe_qos)

    def _on_message(self, client, userdata, msg) -> None:
        number, sent = msg.payload.split(b" ")
        with self.lock:
            n = int(number)
            self.seen[n] = self.seen.get(n, 0) + 1
            self.latency.append(time.perf_counter() - float(sent))

    def count(self) -> int:
        with self.lock:
            return sum(self.seen.values())


def trial(session: str, qos: int, persistence: str, inflight: int, down: float, rate: float,
          lag: float, rng: random.Random) -> dict:
    broker = Mosquitto(extra_config=[*PERSISTENCE[persistence],
                                     f"max_inflight_messages {inflight}"])
    broker.start()
    clean = session == "clean"
    master = Peer("masterapp.BLIP", broker.port, clean, qos, lag)
    testapp = Peer("testapp.BLIP.0", broker.port, clean, None)
    try:
        master.start()
        testapp.start()
        if not (master.subscribed.wait(10) and testapp.connected.wait(10)):
            raise RuntimeError("clients did not connect")
        period = 1.0 / rate
        sent = 0
        t0 = time.perf_counter()
        kill_at = t0 + 1.0 + rng.uniform(0, 0.1)
        restart_at = kill_at + down
        end = restart_at + 5.0
        killed = restarted = False
        steady: int | None = None
        while True:
            now = time.perf_counter()
            if now >= end:
                break
            if not killed and now >= kill_at:
                steady = len(master.latency)
                broker.kill()
                killed = True
            if killed and not restarted and now >= restart_at:
                broker.start()
                restarted = True
            testapp.client.publish(TOPIC, f"{sent} {time.perf_counter()!r}".encode(), 2)
            sent += 1
            time.sleep(max(0.0, t0 + sent * period - time.perf_counter()))
        # drain: until nothing new arrived for 2 s (at most 30 s)
        last, quiet = master.count(), time.perf_counter()
        while time.perf_counter() - quiet < 2.0 and time.perf_counter() - end < 30:
            time.sleep(0.1)
            if master.count() != last:
                last, quiet = master.count(), time.perf_counter()
        with master.lock:
            got = set(master.seen)
            dups = sum(c - 1 for c in master.seen.values())
            lat = sorted(master.latency[:steady or 0])
        return {"sent": sent, "lost": sent - len(got & set(range(sent))), "dups": dups,
                "lat": lat}
    finally:
        testapp.stop()
        master.stop()
        broker.cleanup()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--down", type=float, default=2.0, help="seconds the broker stays dead")
    p.add_argument("--rate", type=float, default=20.0, help="messages per second")
    p.add_argument("--master-lag", type=float, default=0.0,
                   help="extra first reconnect delay of the master, seconds")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    rows = []
    for session, qos, persistence, inflight in SETTINGS:
        runs = [trial(session, qos, persistence, inflight, args.down, args.rate,
                      args.master_lag, rng) for _ in range(args.trials)]
        lost = [r["lost"] for r in runs]
        lat = sorted(x for r in runs for x in r["lat"])
        row = (session, qos, persistence, inflight, statistics.mean(lost), max(lost),
               sum(r["dups"] for r in runs) / len(runs), sum(r["sent"] for r in runs) / len(runs),
               lat[len(lat) // 2] * 1e3, lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3)
        rows.append(row)
        print(f"  {session:10s} sub QoS {qos} persistence {persistence:12s} inflight "
              f"{inflight:4d}: lost {row[4]:.1f} (max {row[5]}) of {row[7]:.0f}, dups "
              f"{row[6]:.1f}, p50 {row[8]:.3f} ms p99 {row[9]:.3f} ms", flush=True)
    print()
    print(f"kill -9, broker down {args.down:g} s, {args.rate:g} QoS 2 messages/s, master "
          f"lag {args.master_lag:g} s, {args.trials} trials per row")
    print()
    print("| session | master sub QoS | persistence | max_inflight | lost per crash (mean) | "
          "worst | duplicates | latency p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]:.1f} | {r[5]} | {r[6]:.1f} | "
              f"{r[8]:.3f} | {r[9]:.3f} |")


if __name__ == "__main__":
    main()
