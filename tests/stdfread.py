"""STDF files read back by pystdf, the independent reader, for the tests."""

from __future__ import annotations

import io

from pystdf.IO import Parser


def pystdf_records(data: bytes) -> list[tuple[str, dict]]:
    """Parse STDF bytes with pystdf; return [(RECORD NAME, {field: value})]."""
    out: list[tuple[str, dict]] = []

    class Collector:
        def after_send(self, source, item):
            rec_type, fields = item
            out.append((type(rec_type).__name__.upper(),
                        dict(zip(rec_type.fieldNames, fields, strict=False))))

    parser = Parser(inp=io.BytesIO(data))
    parser.addSink(Collector())
    parser.parse()
    return out


def read_stdf(path: str) -> list[tuple[str, dict]]:
    with open(path, "rb") as fh:
        return pystdf_records(fh.read())
