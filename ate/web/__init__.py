"""The master's web side: the MSCT UI feed at /ws, the JSON API under /api/v1, /metrics
and the static operator UI, all on one twisted.web Site (protocol.md §11).

- :func:`ate.web.site.make_site` builds the Site for a cell;
- :func:`ate.web.site.web_service` wraps it in a listening service for the tap;
- :func:`ate.web.site.check_access_config` refuses a non-loopback address without a token.
"""
