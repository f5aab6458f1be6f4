"""Simulated test cell parts: the sites (Control apps and TestApps) speaking MQTT.

See :mod:`ate.sim.sites` for the behaviour and :mod:`ate.sim.tap` for the
``twistd ate-sim-sites`` plugin.
"""

from ate.sim.sites import GroundTruth, Outbound, SimSites, SimSitesService

__all__ = ["GroundTruth", "Outbound", "SimSites", "SimSitesService"]
