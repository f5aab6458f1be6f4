"""The Geringer line protocol (protocol.md 13.4): framing, examples, bad frames."""

from __future__ import annotations

import pytest

from ate.handler import lineproto as lp

# Every example line of 13.4, checksum included.
EXAMPLES = [
    "TS|0|OK|229",
    "LE|013",
    "ID?|072",
    "TS?|098",
    "TE|25.0|086",
    "HS|0|OK|217",
    "ID|HTO92-20F|176",
    "LL|306426.001|HS2C|25|243",
    "ST|04|1|P100|-01|002|000|1|P101|-01|002|000|1|P102|-01|002|000|0|P103|-01|002|000|192",
    "ET|3|P100|1|0|0|P101|5|0|0|P102|1|0|0|241",
    "ID|SCT-81-1F|169",
    "TS|2|Lot is Loaded, Test start is awaited|022",
    "TS|-1|Error|131",
    "TS|-68|No Lot was Started|036",
    "TS|2|Lot is Already Active|214",
    "TS|3|Busy Testing|239",
    "HS?|086",
]


@pytest.mark.parametrize("line", EXAMPLES)
def test_example_checksums(line):
    body, _, cs = line.rpartition("|")
    assert f"{lp.checksum(body + '|'):03d}" == cs


def test_checksum_definition():
    assert sum(map(ord, "TS|0|OK|")) == 741
    assert lp.checksum("TS|0|OK|") == 229
    assert lp.frame(["TS", "0", "OK"]) == "TS|0|OK|229"
    assert lp.frame(["LE"]) == "LE|013"


def test_replies_format_exactly():
    assert lp.format_line(lp.TS_OK) == "TS|0|OK|229"
    assert lp.format_line(lp.TS_LOT_LOADED) == "TS|2|Lot is Loaded, Test start is awaited|022"
    assert lp.format_line(lp.TS_NO_LOT) == "TS|-68|No Lot was Started|036"
    assert lp.format_line(lp.TS_HAVE_LOT) == "TS|2|Lot is Already Active|214"
    assert lp.format_line(lp.TS_BUSY) == "TS|3|Busy Testing|239"
    assert lp.format_line(lp.error_status(None)) == "TS|-1|Error|131"
    assert lp.format_line(lp.TesterName("SCT-81-1F")) == "ID|SCT-81-1F|169"
    assert lp.format_line(lp.AskIdentity()) == "ID?|072"
    assert lp.format_line(lp.AskState()) == "HS?|086"
    et = lp.EndTest((lp.EtPart("P100", 1, 0, 0), lp.EtPart("P101", 5, 0, 0),
                     lp.EtPart("P102", 1, 0, 0)))
    assert lp.format_line(et) == "ET|3|P100|1|0|0|P101|5|0|0|P102|1|0|0|241"


def test_parse_ll():
    assert lp.parse_request("LL|306426.001|HS2C|25|243") == lp.LoadLot("306426.001", "HS2C", "25")


def test_parse_st_example():
    st = lp.parse_request(EXAMPLES[8])
    assert isinstance(st, lp.StartTest)
    assert len(st.sites) == 4
    assert st.sites[0] == lp.StSite(True, "P100", -1, 2, "000")
    assert st.sites[3].enabled is False
    assert [i for i, _ in st.enabled()] == [0, 1, 2]
    # and back: the same line
    assert lp.format_line(st) == EXAMPLES[8]


@pytest.mark.parametrize("line,expected", [
    ("LE|013", lp.LotEnd()),
    ("LE|13", lp.LotEnd()),        # any integer text is accepted
    ("LE|269", None),              # 269 != 13: checksum error, see below
    ("ID?|072", lp.IdentifyQuery()),
    ("TS?|098", lp.StateQuery()),
    ("TE|25.0|086", lp.Temperature(25.0, "25.0")),
    ("HS|0|OK|217", lp.HandlerState(0, "ok")),
    ("ID|HTO92-20F|176", lp.HandlerName("HTO92-20F")),
    ("  LE|013  \r", lp.LotEnd()),  # trailing whitespace stripped
])
def test_parse_requests(line, expected):
    if expected is None:
        with pytest.raises(lp.LineError):
            lp.parse_request(line)
    else:
        assert lp.parse_request(line) == expected


def test_hs_text_is_replaced_by_table():
    line = lp.frame(["HS", "-10", "whatever"])
    assert lp.parse_request(line) == lp.HandlerState(-10, "checksum error")


@pytest.mark.parametrize("line", ["", "hello", "LE", "LL|306426.001|HS2C|25|", "LE|", "TS|0|OK| "])
def test_ignored_lines(line):
    assert lp.parse_request(line) is None


@pytest.mark.parametrize("line", ["LE|014", "LE|abc", "LL|306426.001|HS2C|25|244", "TS|0|OK|230"])
def test_checksum_errors(line):
    with pytest.raises(lp.LineError) as info:
        lp.parse_request(line)
    assert info.value.code == -1
    assert lp.format_line(info.value.reply) == lp.frame(["TS", "-1", "checksum error"])


@pytest.mark.parametrize("header", ["XX", "TS", "ET", "HS?", "ll"])
def test_unknown_header_is_not_implemented(header):
    with pytest.raises(lp.LineError) as info:
        lp.parse_request(lp.frame([header, "1"]))
    assert info.value.code == -99
    assert lp.format_line(info.value.reply) == lp.frame(["TS", "-99", "Not Implemented"])


@pytest.mark.parametrize("fields,needle", [
    (["LL", "1", "2"], "LL needs 3"),
    (["LL", "", "HS2C", "25"], "lot number is empty"),
    (["ST", "x"], "site count"),
    (["ST", "02", "1", "P1", "-01", "002", "000"], "announces 2 site"),
    (["ST", "01", "1", "P1", "bin", "002", "000"], "binning"),
    (["TE", "hot"], "not a number"),
    (["LE", "x"], "LE needs 0"),
])
def test_malformed_fields_name_the_problem(fields, needle):
    with pytest.raises(lp.LineError) as info:
        lp.parse_request(lp.frame(fields))
    assert info.value.code == -1
    assert needle in info.value.reason


def test_free_text_cannot_break_framing():
    line = lp.format_line(lp.error_status("bad | thing\nhere"))
    assert line.count("|") == 3
    assert "\n" not in line
    assert lp.parse_reply(line) == lp.TestStatus(-1, "bad / thing?here")


def test_reply_parsing_roundtrip():
    for msg in (lp.TS_OK, lp.TesterName("X"), lp.AskIdentity(), lp.AskState(),
                lp.EndTest((lp.EtPart("P1", 3, "0", "0"),))):
        assert lp.parse_reply(lp.format_line(msg)) == msg


@pytest.mark.parametrize("rtype,message,line", [
    ("notlot", None, "TS|-68|No Lot was Started|036"),
    ("havelot", None, "TS|2|Lot is Already Active|214"),
    ("busy", None, "TS|3|Busy Testing|239"),
    ("error", None, "TS|-1|Error|131"),
    ("strange", None, "TS|-1|Error|131"),
    ("busy", "oops", lp.frame(["TS", "-1", "oops"])),
    ("error", "No tester is available", lp.frame(["TS", "-1", "No tester is available"])),
])
def test_error_response_mapping(rtype, message, line):
    assert lp.format_line(lp.error_response_status(rtype, message)) == line


def test_too_long_line():
    with pytest.raises(lp.LineError):
        lp.parse_request("LL|" + "x" * 5000 + "|1|2|000")
