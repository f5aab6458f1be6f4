#!/usr/bin/env python3
"""MQTT links side by side: publish/receive loops through one private mosquitto.

    python bench/links.py [--links twisted,paho,twisted-mqtt] [--count 20000] [--size 300]

Each link runs in its own process, two ``MqttService``s on it (a sender and a receiver
subscribed at the same QoS) on the Twisted reactor, for QoS 0 and QoS 2: the sender
publishes ``count`` messages of ``size`` bytes at once (the link queues what its window
does not take), the receiver counts them. Reported: messages/s from the first publish
to the last message received, and the process's CPU per message (send and receive
both, from /proc). Then a reconnect check at QoS 2: the sender's connection is dropped
without DISCONNECT once half of its messages are acked; every publish must still be
acked and every message received (duplicates counted: QoS 2 is exactly once per
connection, and a resend after a reconnect may deliver one again).

``twisted`` is ours (the default link), ``paho`` is paho-mqtt on the reactor,
``twisted-mqtt`` the PyPI package through bench/twisted_mqtt_link.py; a link whose
package is not importable is reported as skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

TICKS = os.sysconf("SC_CLK_TCK")
LINKS = ("twisted", "paho", "twisted-mqtt")


def cpu_seconds() -> float:
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def factory_for(link: str):
    if link == "twisted-mqtt":
        import twisted_mqtt_link

        return twisted_mqtt_link.create
    from ate.mqtt.link import link_factory

    return link_factory(link)


async def one(reactor, link: str, port: int, count: int, size: int) -> dict:
    from twisted.internet.defer import Deferred, gatherResults

    from ate.config import MqttOptions
    from ate.mqtt import MqttService

    make = factory_for(link)
    options = MqttOptions(host="127.0.0.1", port=port, keepalive=60)
    result: dict = {"link": link}

    def service(name, subscriptions, on_message):
        return MqttService(reactor, options, f"links.{link}.{name}", subscriptions=subscriptions,
                           on_message=on_message, backoff=(0.1, 0.5), link_factory=make)

    for qos in (0, 2):
        topic = f"bench/{link}/q{qos}"
        got: list[bytes] = []
        receiver = service(f"rx{qos}", [(topic, qos)], lambda t, p, got=got: got.append(p))
        sender = service(f"tx{qos}", [], lambda t, p: None)
        receiver.startService()
        sender.startService()
        await gatherResults([receiver.whenConnected(), sender.whenConnected()])
        while not got:  # until the receiver's subscription is in place
            await sender.publish(topic, b"warm-up", qos)
            await Deferred.fromCoroutine(_until(reactor, lambda got=got: bool(got), 0.2,
                                                    fail=False))
        await Deferred.fromCoroutine(_until(reactor, lambda: False, 0.2, fail=False))
        got.clear()
        payload = b"x" * size
        c0, w0 = cpu_seconds(), time.perf_counter()
        acks = [sender.publish(topic, payload, qos) for _ in range(count)]
        await gatherResults(acks)
        await Deferred.fromCoroutine(_until(reactor, lambda got=got: len(got) >= count,
                                                120))
        wall, cpu = time.perf_counter() - w0, cpu_seconds() - c0
        assert got == [payload] * count, f"QoS {qos}: {len(got)}/{count} received"
        result[f"q{qos}_msgs_s"] = count / wall
        result[f"q{qos}_cpu_us"] = cpu / count * 1e6
        await sender.stopService()
        await receiver.stopService()

    # reconnect: the sender's connection dropped mid-burst at QoS 2
    topic = f"bench/{link}/reconnect"
    seen: list[bytes] = []
    receiver = service("rxr", [(topic, 2)], lambda t, p: seen.append(p))
    sender = service("txr", [], lambda t, p: None)
    receiver.startService()
    sender.startService()
    await gatherResults([receiver.whenConnected(), sender.whenConnected()])
    n = min(count, 4000)
    acked = [0]

    def one_acked(_):
        acked[0] += 1
        if acked[0] == n // 2:
            sender._link.abort()

    acks = [sender.publish(topic, str(i).encode(), 2).addCallback(one_acked) for i in range(n)]
    try:
        await gatherResults(acks).addTimeout(60, reactor)
        await Deferred.fromCoroutine(_until(reactor, lambda: len(set(seen)) >= n, 30))
        result["reconnect"] = (f"{acked[0]}/{n} acked, {len(set(seen))}/{n} received, "
                               f"{len(seen) - len(set(seen))} duplicates, "
                               f"{sender.reconnects} reconnect")
    except Exception as e:  # what does not survive the drop is the finding
        result["reconnect"] = (f"FAILED ({type(e).__name__}): {acked[0]}/{n} acked, "
                               f"{len(set(seen))}/{n} received, reconnects {sender.reconnects}")
    await sender.stopService()
    await receiver.stopService()
    return result


async def _until(reactor, condition, timeout: float = 30.0, fail: bool = True) -> None:
    """Poll ``condition`` every 10 ms for up to ``timeout`` seconds."""
    from twisted.internet.task import deferLater

    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            if fail:
                raise TimeoutError("condition not reached")
            return
        await deferLater(reactor, 0.01, lambda: None)


def child(args) -> None:
    from twisted.internet import defer, task

    async def run(reactor):
        r = await one(reactor, args.one, args.port, args.count, args.size)
        print("RESULT " + json.dumps(r), flush=True)

    task.react(lambda reactor: defer.Deferred.fromCoroutine(run(reactor)))


def main(args) -> None:
    from ate.broker import Mosquitto

    # No limit on a client's queue in the broker: a receiver slower than its sender must
    # not lose messages to mosquitto's max_queued_messages (1000), this measures links.
    broker = Mosquitto(extra_config=["max_queued_messages 0"])
    broker.start()
    rows = []
    try:
        for link in args.links:
            if link == "twisted-mqtt":
                try:
                    import mqtt.client.factory  # noqa: F401
                except ImportError:
                    print(f"  {link}: skipped (pip install twisted-mqtt)", flush=True)
                    continue
            out = subprocess.run(
                [sys.executable, __file__, "--one", link, "--port", str(broker.port),
                 "--count", str(args.count), "--size", str(args.size)],
                capture_output=True, text=True, timeout=900)
            line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
            if out.returncode or not line:
                print(f"  {link}: failed\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}", flush=True)
                continue
            r = json.loads(line[0][7:])
            rows.append(r)
            print(f"  {link}: {r}", flush=True)
    finally:
        broker.stop()
        broker.cleanup()
    base = next((r for r in rows if r["link"] == "twisted"), None)
    print()
    print(f"{args.count} messages of {args.size} bytes, sender and receiver in one process")
    print("| link | QoS 0 msg/s | QoS 0 CPU us/msg | QoS 2 msg/s | QoS 2 CPU us/msg | "
          "CPU vs ours (0 / 2) | reconnect at QoS 2 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = (f"{r['q0_cpu_us'] / base['q0_cpu_us']:.2f}x / "
                 f"{r['q2_cpu_us'] / base['q2_cpu_us']:.2f}x") if base else "-"
        print(f"| {r['link']} | {r['q0_msgs_s']:.0f} | {r['q0_cpu_us']:.1f} | "
              f"{r['q2_msgs_s']:.0f} | {r['q2_cpu_us']:.1f} | {ratio} | {r['reconnect']} |")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--links", default=",".join(LINKS),
                   type=lambda s: [x for x in s.split(",") if x])
    p.add_argument("--count", type=int, default=20000, help="messages per loop")
    p.add_argument("--size", type=int, default=300, help="payload bytes")
    p.add_argument("--one", choices=LINKS, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    for link in a.links:
        if link not in LINKS:
            p.error(f"--links: {link!r} is not one of {', '.join(LINKS)}")
    return a


if __name__ == "__main__":
    a = parse()
    child(a) if a.one else main(a)
