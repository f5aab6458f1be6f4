"""The MQTT link seam (ate.mqtt.link): which link is chosen, and that the default one
(ours, on Twisted) runs without paho being imported at all."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from ate.mqtt import link as seam

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Builds an MqttService the way the tap does (options with or without "client"), starts
# and stops it on a Clock (the link connects through an endpoint that never answers),
# then prints whether paho was imported.
_PROBE = """
import sys
from types import SimpleNamespace
from twisted.internet.task import Clock
from ate.mqtt import MqttService
import ate.mqtt.twistedlink

kw = dict(host="127.0.0.1", port=1883, username=None, password=None, tls=False,
          tls_ca=None, tls_cert=None, tls_key=None, tls_insecure=False, keepalive=60)
if sys.argv[1] != "-":
    kw["client"] = sys.argv[1]
service = MqttService(Clock(), SimpleNamespace(**kw), "probe", on_message=print)
service.startService()
print(type(service._link).__module__)
print("paho" in sys.modules or any(m.startswith("paho.") for m in sys.modules))
"""


def _probe(client: str) -> list[str]:
    result = subprocess.run([sys.executable, "-c", _PROBE, client], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_default_link_is_ours_and_imports_no_paho():
    assert _probe("-") == ["ate.mqtt.twistedlink", "False"]
    assert _probe("twisted") == ["ate.mqtt.twistedlink", "False"]


def test_paho_link_when_chosen():
    assert _probe("paho") == ["ate.mqtt.reactorpaho", "True"]


def test_link_factory_by_name():
    from ate.mqtt import twistedlink
    from ate.mqtt.reactorpaho import ReactorPaho
    from ate.mqtt.service import default_link_factory

    assert seam.DEFAULT_LINK == "twisted"
    assert seam.link_factory() is twistedlink.create
    assert seam.link_factory("paho") == ReactorPaho.create
    assert default_link_factory(SimpleNamespace()) is twistedlink.create
    assert default_link_factory(SimpleNamespace(client="paho")) == ReactorPaho.create
    with pytest.raises(ValueError, match="'hbmqtt': not one of twisted, paho"):
        seam.link_factory("hbmqtt")


def test_both_links_share_one_error_and_window():
    from ate.mqtt import reactorpaho, twistedlink

    assert twistedlink.MqttLinkError is reactorpaho.MqttLinkError is seam.MqttLinkError
    assert twistedlink.WINDOW == seam.WINDOW == 20
    client = reactorpaho.make_paho_client(
        SimpleNamespace(host="127.0.0.1", port=1883, username=None, password=None,
                        tls=False, keepalive=60), "c", None)
    assert client._max_inflight_messages == seam.WINDOW
