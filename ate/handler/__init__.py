"""ate-handler: the handler application (protocol.md 13).

It sits between one handler device (Geringer line protocol, :mod:`.lineproto`,
over serial or TCP, :mod:`.drivers.line`, or the in-process simulated device,
:mod:`.drivers.simulated`) and one or more masters on MQTT (:mod:`.service`).
The lifecycle and the multi-master rules are in :mod:`.machine`; the twistd
plugin ``ate-handler`` is :mod:`.tap`.
"""
