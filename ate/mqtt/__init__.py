"""MQTT on the Twisted reactor: L{MqttService} over one of two links.

The link seam is L{ate.mqtt.link}. The default link is ours, L{ate.mqtt.twistedlink}
(MQTT 3.1.1 on Twisted, config C{mqtt_client = "twisted"}); L{ate.mqtt.reactorpaho}
runs paho-mqtt 2.x on the reactor (C{mqtt_client = "paho"}). Importing this package
imports no paho.
"""

from ate.mqtt.service import MqttNotConnected, MqttService

__all__ = ["MqttNotConnected", "MqttService"]
