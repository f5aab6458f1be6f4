"""Client TLS settings from C{MqttOptions} for the Twisted link (L{ate.mqtt.twistedlink}).

C{tls_ca} (a PEM file, may hold several certificates) replaces the platform trust store;
C{tls_cert} / C{tls_key} (PEM) give a client certificate (the key may be in the
certificate file). With C{tls_insecure} the broker's certificate chain is still verified
but its host name is not, which is what paho's C{tls_insecure_set(True)} does.
"""

from __future__ import annotations

from typing import Any

__all__ = ["tls_connection_creator"]


def _read(path: str) -> str:
    with open(path, encoding="ascii") as f:
        return f.read()


def tls_connection_creator(options: Any) -> Any:
    """The client TLS settings for C{options} (see the module docstring)."""
    from twisted.internet import ssl

    trust = None
    if options.tls_ca:
        pem = _read(options.tls_ca)
        end = "-----END CERTIFICATE-----"
        blocks = [block + end for block in pem.split(end) if "-----BEGIN CERTIFICATE-----" in block]
        if not blocks:
            raise ValueError(f"tls_ca {options.tls_ca!r}: no PEM certificate found")
        trust = ssl.trustRootFromCertificates(
            [ssl.Certificate.loadPEM(b.encode("ascii")) for b in blocks])
    client = None
    if options.tls_cert:
        cert = _read(options.tls_cert)
        key = _read(options.tls_key) if options.tls_key else cert
        client = ssl.PrivateCertificate.loadPEM((cert + "\n" + key).encode("ascii"))
    if options.tls_insecure:
        extra: dict[str, Any] = {}
        if client is not None:
            extra = dict(privateKey=client.privateKey.original, certificate=client.original)
        return ssl.CertificateOptions(trustRoot=trust if trust is not None else ssl.platformTrust(),
                                      **extra)
    return ssl.optionsForClientTLS(options.host, trustRoot=trust, clientCertificate=client)
