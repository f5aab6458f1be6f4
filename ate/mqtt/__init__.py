"""MQTT on the Twisted reactor: paho-mqtt 2.x external loop plus MqttService."""

from ate.mqtt.service import MqttNotConnected, MqttService

__all__ = ["MqttNotConnected", "MqttService"]
