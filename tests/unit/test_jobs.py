"""Tests for ate.jobs: job file lookup, XML parsing, verification and derivation (protocol 5)."""

from __future__ import annotations

import os
import re
import types
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ate.config import load_master_config
from ate.jobs import (
    BinEntry,
    FilesystemSource,
    Identity,
    Job,
    JobError,
    JobSource,
    StaticSource,
    check_lot_number,
    job_from_xml,
    job_source_from_config,
    parse_xml,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
FIXTURE = FIXTURES / "jobs" / "le306426001.xml"
FIXTURE_TEXT = FIXTURE.read_text(encoding="utf-8")
FILE = "le306426001.xml"
LOT = "306426.001"
DEVICE = "SCT-81-1F"
HANDLER = "HTO92-20F"
PATTERN = "le#jobname#.xml"


def make_source(directory: Path, **kwargs) -> FilesystemSource:
    options = {"device_id": DEVICE, "handler_id": HANDLER}
    options.update(kwargs)
    return FilesystemSource(str(directory), PATTERN, **options)


def write_job(directory: Path, text: str, name: str = FILE) -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def replace_once(text: str, old: str, new: str) -> str:
    """Replace the first occurrence of ``old``; fail the test if it is absent."""
    assert old in text, f"fixture does not contain {old!r}"
    return text.replace(old, new, 1)


def in_station(text: str, old: str, new: str) -> str:
    """Replace ``old`` only inside the STATION section."""
    head, sep, tail = text.partition("<STATION>")
    assert sep
    return head + sep + replace_once(tail, old, new)


def load_text(tmp_path: Path, text: str, lot: str = LOT, **kwargs) -> Job:
    write_job(tmp_path, text)
    return make_source(tmp_path, **kwargs).load(lot)


def section_emptied(name: str) -> str:
    return re.sub(rf"<{name}>.*?</{name}>", f"<{name}></{name}>", FIXTURE_TEXT, count=1,
                  flags=re.S)


def section_removed(name: str) -> str:
    return re.sub(rf"<{name}>.*?</{name}>", "", FIXTURE_TEXT, count=1, flags=re.S)


# --------------------------------------------------------------------------------------
# The fixture (tests/fixtures/jobs, docs/protocol.md 5.2-5.4)


def test_fixture_parses_to_documented_values(tmp_path):
    write_job(tmp_path, FIXTURE_TEXT)
    job = make_source(tmp_path).load(LOT)
    assert job.lot_number == "306426.001"
    assert job.sblot_id == "001"
    assert job.part_typ == "HS2CQFN16T7A_FT1A"
    assert job.pkg_typ == "QF"
    assert job.tst_temp == "25"
    assert job.user_txt == "FT1 ROOM"
    assert job.testapp_script_path == "hallsens2_ft1.py"
    assert job.cwd == "programs/HALLSENS2/rev1.3"
    assert job.testapp_script_args == ("--verbose",)
    assert job.path == os.path.realpath(tmp_path / FILE)
    assert job.bin_table_wire() == {
        "1": ["1"], "2": ["2"], "5": ["12", "13"], "6": ["20", "21"], "0": ["60000"],
    }
    assert list(job.bin_table_wire()) == ["1", "2", "5", "6", "0"]
    assert job.groups() == ("BT_PASS", "BT_FAIL_CONT", "BT_FAIL_ELECTRIC", "BT_ALARM")
    assert len(job.bins) == 7
    assert job.bins[0] == BinEntry(1, 1, "SB_GOOD", "BT_PASS", "Good part, grade A")
    assert job.bins[-1] == BinEntry(60000, 0, "SB_SMU_ALARM", "BT_ALARM", "SMU compliance alarm")


def test_fixture_config_loads_the_fixture_job(tmp_path, monkeypatch):
    """The repository's fixture master config (reference format) and job file belong
    together: its job directory and pattern find the job for lot 306426.001 (the
    dotless name), and its device and handler pass the job's identity checks."""
    (tmp_path / "webui").mkdir()
    (tmp_path / "jobs").mkdir()
    write_job(tmp_path / "jobs", FIXTURE_TEXT)
    monkeypatch.chdir(tmp_path)
    cfg = load_master_config(str(FIXTURES / "config" / "master_config_file.json"))
    job = job_source_from_config(cfg).load(LOT)
    assert (cfg.device_id, cfg.handler_id) == (DEVICE, HANDLER)
    assert job.part_typ == "HS2CQFN16T7A_FT1A"
    assert job.path == os.path.realpath(tmp_path / "jobs" / FILE)


def _without_leading_comment(text: str) -> str:
    return re.sub(r"^(<\?xml[^>]*\?>\s*)<!--.*?-->\s*", r"\1", text, count=1, flags=re.S)


def test_demo_job_is_the_fixture():
    """ate-demo ships a copy of the fixture job; apart from its leading comment the two
    files are the same, so the demo runs the tested job."""
    demo = Path(__file__).resolve().parents[2] / "ate" / "demodata" / FILE
    assert _without_leading_comment(demo.read_text(encoding="utf-8")) == \
        _without_leading_comment(FIXTURE_TEXT)


def test_job_is_hashable_and_frozen(tmp_path):
    job = load_text(tmp_path, FIXTURE_TEXT)
    assert hash(job) == hash(load_text(tmp_path, FIXTURE_TEXT))
    with pytest.raises(AttributeError):
        job.lot_number = "x"  # type: ignore[misc]
    wire = job.bin_table_wire()
    wire["1"].append("999")
    assert job.bin_table_wire()["1"] == ["1"]


# --------------------------------------------------------------------------------------
# Verification: one failing variant per rule, message asserted


SECTIONS = ("MAIN", "CLUSTER", "TESTPROGRAM", "HANDLERSECTION", "PAT", "STATION",
            "DIEELEMENT_COUNT", "DIEELEMENT")


@pytest.mark.parametrize("section", SECTIONS)
@pytest.mark.parametrize("mutate", [section_emptied, section_removed], ids=["empty", "missing"])
def test_section_missing_or_empty(tmp_path, section, mutate):
    with pytest.raises(JobError) as info:
        load_text(tmp_path, mutate(section))
    assert str(info.value) == f"job file {FILE}: section {section} missing or empty"


def test_whitespace_only_section_counts_as_empty(tmp_path):
    text = re.sub(r"<PAT>.*?</PAT>", "<PAT>\n   \n</PAT>", FIXTURE_TEXT, flags=re.S)
    with pytest.raises(JobError, match=r"section PAT missing or empty$"):
        load_text(tmp_path, text)


def test_duplicated_section_refused(tmp_path):
    text = replace_once(FIXTURE_TEXT, "<PAT>", "<PAT><X>1</X></PAT><PAT>")
    with pytest.raises(JobError) as info:
        load_text(tmp_path, text)
    assert str(info.value) == f"job file {FILE}: section PAT given 2 times, expected once"


BROKEN = [
    # (id, text transformation, expected message after "job file <FILE>: ")
    ("lot-mismatch",
     lambda t: replace_once(t, "<LOTNUMBER>306426.001", "<LOTNUMBER>306426.002"),
     "LOTNUMBER is 306426.002, expected 306426.001"),
    ("lot-missing",
     lambda t: replace_once(t, "<LOTNUMBER>306426.001</LOTNUMBER>", ""),
     "MAIN/LOTNUMBER missing or empty"),
    ("matchcode-missing",
     lambda t: replace_once(t, "<MATCHCODE>HS2CQFN16T7A</MATCHCODE>", "<MATCHCODE/>"),
     "MAIN/MATCHCODE missing or empty"),
    ("package-missing",
     lambda t: replace_once(t, "<PACKAGEID_SHORT>QF</PACKAGEID_SHORT>", ""),
     "MAIN/PACKAGEID_SHORT missing or empty"),
    ("cluster-tester-mismatch",
     lambda t: replace_once(t, "<TESTER1>SCT-81-1F", "<TESTER1>SCT-81-2F"),
     "CLUSTER TESTER is SCT-81-2F, expected SCT-81-1F"),
    ("cluster-tester-missing",
     lambda t: replace_once(t, "<TESTER1>SCT-81-1F</TESTER1>", ""),
     "CLUSTER TESTER is missing, expected SCT-81-1F"),
    ("station-mismatch",
     lambda t: in_station(t, "<TESTER1>SCT-81-1F", "<TESTER1>SCT-81-2F"),
     "no STATION entry has TESTER SCT-81-1F"),
    ("handler-mismatch",
     lambda t: replace_once(t, "<HANDLER_PROBER>HTO92-20F", "<HANDLER_PROBER>HTO92-21F"),
     "HANDLER_PROBER is HTO92-21F, expected HTO92-20F"),
    ("handler-missing",
     lambda t: replace_once(t, "<HANDLER_PROBER>HTO92-20F</HANDLER_PROBER>", ""),
     "CLUSTER/HANDLER_PROBER missing or empty"),
    ("usertext-missing",
     lambda t: in_station(t, "<USERTEXT1>FT1 ROOM</USERTEXT1>", ""),
     "station STATION1: USERTEXT missing or empty"),
    ("temp-empty",
     lambda t: in_station(t, "<TEMP1>25</TEMP1>", "<TEMP1> </TEMP1>"),
     "station STATION1: TEMP missing or empty"),
    ("testerprg-missing",
     lambda t: in_station(t, "<TESTERPRG1>FT1A</TESTERPRG1>", ""),
     "station STATION1: TESTERPRG missing or empty"),
    ("program-dir-missing",
     lambda t: in_station(t, "<PROGRAM_DIR1>programs/HALLSENS2/rev1.3/hallsens2_ft1.py"
                             "</PROGRAM_DIR1>", ""),
     "station STATION1: PROGRAM_DIR missing or empty"),
    ("program-dir-no-file",
     lambda t: in_station(t, "rev1.3/hallsens2_ft1.py", "rev1.3/"),
     "station STATION1: PROGRAM_DIR 'programs/HALLSENS2/rev1.3/' names no file"),
    ("temp-nested",
     lambda t: in_station(t, "<TEMP1>25</TEMP1>", "<TEMP1><C>25</C></TEMP1>"),
     "station STATION1: TEMP must be plain text, not nested elements"),
    ("temp-twice",
     lambda t: in_station(t, "<TEMP1>25</TEMP1>", "<TEMP1>25</TEMP1><TEMP2>30</TEMP2>"),
     "station STATION1: TEMP given more than once (TEMP1, TEMP2)"),
    ("bintable-missing",
     lambda t: re.sub(r"<BINTABLE1>.*</BINTABLE1>", "", t, flags=re.S),
     "station STATION1: BINTABLE missing or empty"),
    ("bintable-empty",
     lambda t: re.sub(r"<BINTABLE1>.*</BINTABLE1>", "<BINTABLE1/>", t, flags=re.S),
     "station STATION1: BINTABLE missing or empty"),
    ("bintable-no-entry",
     lambda t: re.sub(r"<BINTABLE1>.*</BINTABLE1>", "<BINTABLE1><X>1</X></BINTABLE1>", t,
                      flags=re.S),
     "station STATION1: BINTABLE has no ENTRY"),
    ("sbin-not-integer",
     lambda t: replace_once(t, 'SBIN="12"', 'SBIN="12a"'),
     "bin table entry 3: SBIN '12a' is not an integer from 0 to 65535"),
    ("sbin-negative",
     lambda t: replace_once(t, 'SBIN="12"', 'SBIN="-12"'),
     "bin table entry 3: SBIN '-12' is not an integer from 0 to 65535"),
    ("sbin-too-large",
     lambda t: replace_once(t, 'SBIN="60000"', 'SBIN="65536"'),
     "bin table entry 7: SBIN '65536' is not an integer from 0 to 65535"),
    ("sbin-float",
     lambda t: replace_once(t, 'SBIN="2"', 'SBIN="2.0"'),
     "bin table entry 2: SBIN '2.0' is not an integer from 0 to 65535"),
    ("sbin-empty",
     lambda t: replace_once(t, 'SBIN="13"', 'SBIN=""'),
     "bin table entry 4: SBIN missing or empty"),
    ("sbin-absent",
     lambda t: replace_once(t, 'SBIN="13"', ''),
     "bin table entry 4: SBIN missing or empty"),
    ("hbin-not-integer",
     lambda t: replace_once(t, 'HBIN="6"', 'HBIN="six"'),
     "bin table entry 5: HBIN 'six' is not an integer from 0 to 65535"),
    ("hbin-too-large",
     lambda t: replace_once(t, 'HBIN="0"', 'HBIN="70000"'),
     "bin table entry 7: HBIN '70000' is not an integer from 0 to 65535"),
    ("sbin-duplicate",
     lambda t: replace_once(t, 'SBIN="21"', 'SBIN="12"'),
     "bin table entry 6: SBIN 12 already used by bin table entry 3"),
    ("sbin-duplicate-leading-zero",
     lambda t: replace_once(t, 'SBIN="21"', 'SBIN="0012"'),
     "bin table entry 6: SBIN 12 already used by bin table entry 3"),
    ("sbinname-empty",
     lambda t: replace_once(t, 'SBINNAME="SB_IDD"', 'SBINNAME=" "'),
     "bin table entry 5: SBINNAME missing or empty"),
    ("group-missing",
     lambda t: replace_once(t, 'GROUP="BT_ALARM"', ''),
     "bin table entry 7: GROUP missing or empty"),
    ("entry-without-attributes",
     lambda t: replace_once(t, "<BINTABLE1>", "<BINTABLE1><ENTRY>1</ENTRY>"),
     "bin table entry 1: SBIN missing or empty"),
]


@pytest.mark.parametrize("mutate, problem", [(m, p) for _, m, p in BROKEN],
                         ids=[case[0] for case in BROKEN])
def test_broken_job_refused_with_message(tmp_path, mutate, problem):
    with pytest.raises(JobError) as info:
        load_text(tmp_path, mutate(FIXTURE_TEXT))
    assert str(info.value) == f"job file {FILE}: {problem}"


def test_malformed_xml_names_file_line_and_column(tmp_path):
    text = replace_once(FIXTURE_TEXT, "</MAIN>", "</MAINX>")
    before = text[: text.index("MAINX>")]  # expat points at the tag name
    line = before.count("\n") + 1
    column = len(before.rsplit("\n", 1)[-1]) + 1
    with pytest.raises(JobError) as info:
        load_text(tmp_path, text)
    assert str(info.value) == (
        f"job file {FILE}: malformed XML: mismatched tag at line {line}, column {column}"
    )


@pytest.mark.parametrize("data, reason", [
    (b"", "no element found"),
    (b"<a/><b/>", "junk after document element"),
    (b"<a>&undefined;</a>", "undefined entity"),
    (b"<a>\x01</a>", "not well-formed"),
    (b"\xff\xfe\x00garbage", "syntax error"),
])
def test_malformed_xml_variants(data, reason):
    with pytest.raises(JobError, match=rf"^job file x\.xml: malformed XML: {reason}"):
        parse_xml(data, "x.xml")


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<lolz>&lol3;</lolz>
"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE r [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<r><MAIN>&xxe;</MAIN></r>
"""


@pytest.mark.parametrize("data", [BILLION_LAUGHS, EXTERNAL_ENTITY, b"<!DOCTYPE r><r/>"],
                         ids=["billion-laughs", "external-entity", "plain-doctype"])
def test_doctype_refused(tmp_path, data):
    (tmp_path / FILE).write_bytes(data)
    with pytest.raises(JobError, match=rf"^job file {FILE}: DOCTYPE declaration .* not allowed"):
        make_source(tmp_path).load(LOT)


def test_doctype_inside_fixture_refused(tmp_path):
    text = replace_once(FIXTURE_TEXT, "<PROBE_FINAL_TEST>",
                        '<!DOCTYPE PROBE_FINAL_TEST [<!ENTITY t "SCT-81-1F">]>\n'
                        "<PROBE_FINAL_TEST>")
    with pytest.raises(JobError, match="DOCTYPE declaration"):
        load_text(tmp_path, text)


def test_deep_nesting_refused():
    data = b"<a>" * 500 + b"</a>" * 500
    with pytest.raises(JobError, match=r"^job file d\.xml: elements nested deeper than"):
        parse_xml(data, "d.xml")


def test_oversized_file_refused(tmp_path):
    write_job(tmp_path, FIXTURE_TEXT)
    source = make_source(tmp_path, max_size=1000)
    with pytest.raises(JobError) as info:
        source.load(LOT)
    assert str(info.value) == f"job file {FILE}: larger than 1000 bytes"


def test_default_size_cap_is_ten_megabytes(tmp_path):
    path = tmp_path / FILE
    with open(path, "wb") as stream:
        stream.truncate(10 * 1024 * 1024 + 1)
    with pytest.raises(JobError, match="larger than 10485760 bytes"):
        make_source(tmp_path).load(LOT)


# --------------------------------------------------------------------------------------
# Accepted variants and derivation (5.4)


def test_single_entry_accepted(tmp_path):
    text = re.sub(r"<BINTABLE1>.*</BINTABLE1>",
                  '<BINTABLE1><ENTRY SBIN="1" HBIN="1" SBINNAME="SB_GOOD" GROUP="BT_PASS"/>'
                  "</BINTABLE1>", FIXTURE_TEXT, flags=re.S)
    job = load_text(tmp_path, text)
    assert job.bins == (BinEntry(1, 1, "SB_GOOD", "BT_PASS", ""),)
    assert job.bin_table_wire() == {"1": ["1"]}
    assert job.groups() == ("BT_PASS",)


def test_lot_without_dot_has_empty_sblot(tmp_path):
    text = FIXTURE_TEXT.replace("306426.001", "306426001")
    job = load_text(tmp_path, text, lot="306426001")
    assert job.lot_number == "306426001"
    assert job.sblot_id == ""


def test_sblot_is_text_after_first_dot(tmp_path):
    text = FIXTURE_TEXT.replace("306426.001", "306426.001.2")
    write_job(tmp_path, text, "le306426.001.2.xml")
    job = make_source(tmp_path).load("306426.001.2")
    assert job.sblot_id == "001.2"


def test_bin_numbers_normalised_without_leading_zeros(tmp_path):
    text = replace_once(FIXTURE_TEXT, 'SBIN="12"    HBIN="5"', 'SBIN="0012" HBIN="05"')
    text = replace_once(text, 'SBIN="1"     HBIN="1"', 'SBIN="000" HBIN="00"')
    job = load_text(tmp_path, text)
    wire = job.bin_table_wire()
    assert wire == {"0": ["0", "60000"], "2": ["2"], "5": ["12", "13"], "6": ["20", "21"]}
    assert list(wire) == ["0", "2", "5", "6"]
    assert job.bins[2].sbin == 12 and job.bins[2].hbin == 5


@pytest.mark.parametrize("program_dir, cwd, script", [
    ("hallsens2_ft1.py", "", "hallsens2_ft1.py"),
    (r"C:\progs\HALLSENS2\run.py", r"C:\progs\HALLSENS2", "run.py"),
    (r"progs/mixed\sub/run.py", r"progs/mixed\sub", "run.py"),
    (r"progs\mixed/run.py", r"progs\mixed", "run.py"),
    ("/opt/programs/run.py", "/opt/programs", "run.py"),
])
def test_program_dir_split_at_last_separator(tmp_path, program_dir, cwd, script):
    text = in_station(FIXTURE_TEXT, "programs/HALLSENS2/rev1.3/hallsens2_ft1.py", program_dir)
    job = load_text(tmp_path, text)
    assert (job.cwd, job.testapp_script_path) == (cwd, script)


def test_testprogram_program_dir_is_ignored(tmp_path):
    text = replace_once(FIXTURE_TEXT,
                        "<PROGRAM_DIR>programs/HALLSENS2/rev1.3/hallsens2_ft1.py</PROGRAM_DIR>",
                        "<PROGRAM_DIR>other/x.py</PROGRAM_DIR>")
    assert load_text(tmp_path, text).testapp_script_path == "hallsens2_ft1.py"


def test_first_matching_station_wins(tmp_path):
    other = ("<STATION0><USERTEXT1>OTHER</USERTEXT1><TEMP1>90</TEMP1>"
             "<TESTERPRG1>X</TESTERPRG1><PROGRAM_DIR1>x/y.py</PROGRAM_DIR1>"
             "<TESTER1>SCT-99</TESTER1>"
             '<BINTABLE1><ENTRY SBIN="9" HBIN="9" SBINNAME="N" GROUP="G"/></BINTABLE1>'
             "</STATION0>")
    second = other.replace("STATION0", "STATION2").replace("SCT-99", DEVICE)
    text = replace_once(FIXTURE_TEXT, "<STATION>", "<STATION>" + other)
    text = replace_once(text, "</STATION>", second + "</STATION>")
    job = load_text(tmp_path, text)
    assert job.user_txt == "FT1 ROOM"
    assert job.tst_temp == "25"


def test_station_found_by_tester_without_digits(tmp_path):
    text = in_station(FIXTURE_TEXT, "<TESTER1>SCT-81-1F</TESTER1>",
                      "<TESTER>SCT-81-1F</TESTER>")
    assert load_text(tmp_path, text).part_typ == "HS2CQFN16T7A_FT1A"


def test_cluster_with_several_testers(tmp_path):
    text = replace_once(FIXTURE_TEXT, "<TESTER1>SCT-81-1F</TESTER1>",
                        "<TESTER1>SCT-81-9F</TESTER1><TESTER2>SCT-81-1F</TESTER2>")
    assert load_text(tmp_path, text).lot_number == LOT
    text = replace_once(FIXTURE_TEXT, "<TESTER1>SCT-81-1F</TESTER1>",
                        "<TESTER1>SCT-81-9F</TESTER1><TESTER2>SCT-81-8F</TESTER2>")
    with pytest.raises(JobError, match=r"CLUSTER TESTER is SCT-81-9F, SCT-81-8F, expected"):
        load_text(tmp_path, text)


def test_text_whitespace_is_stripped(tmp_path):
    text = in_station(FIXTURE_TEXT, "<USERTEXT1>FT1 ROOM</USERTEXT1>",
                      "<USERTEXT1>\n   FT1 ROOM  \n</USERTEXT1>")
    assert load_text(tmp_path, text).user_txt == "FT1 ROOM"


def test_latin1_encoded_file(tmp_path):
    text = FIXTURE_TEXT.replace('encoding="utf-8"', 'encoding="iso-8859-1"')
    text = in_station(text, "FT1 ROOM", "Prüfraum 25°C")
    (tmp_path / FILE).write_bytes(text.encode("iso-8859-1"))
    assert make_source(tmp_path).load(LOT).user_txt == "Prüfraum 25°C"


def test_parse_xml_has_xmltodict_semantics():
    doc = parse_xml(b'<r><a x="1"/><b>t</b><b/><c> </c><d y="2">z</d></r>', "f.xml")
    assert doc == {"r": {"a": {"@x": "1"}, "b": ["t", None], "c": None,
                         "d": {"@y": "2", "#text": "z"}}}


def test_job_from_xml_directly():
    job = job_from_xml(FIXTURE.read_bytes(), file_name=FILE, path="/x/" + FILE,
                       identity=Identity(LOT, DEVICE, HANDLER))
    assert job.path == "/x/" + FILE
    assert job.part_typ == "HS2CQFN16T7A_FT1A"


# --------------------------------------------------------------------------------------
# skip_jobdata_verification (5.3, §14 item 4)


def test_skip_verification_skips_identity_checks(tmp_path):
    text = replace_once(FIXTURE_TEXT, "<LOTNUMBER>306426.001", "<LOTNUMBER>999999.042")
    text = replace_once(text, "<TESTER1>SCT-81-1F", "<TESTER1>SCT-81-2F")
    text = replace_once(text, "<HANDLER_PROBER>HTO92-20F</HANDLER_PROBER>", "")
    write_job(tmp_path, text)
    with pytest.raises(JobError, match="LOTNUMBER is 999999.042"):
        make_source(tmp_path).load(LOT)
    job = make_source(tmp_path, skip_verification=True).load(LOT)
    assert job.lot_number == LOT
    assert job.sblot_id == "042"
    assert job.bin_table_wire()["5"] == ["12", "13"]


@pytest.mark.parametrize("mutate, problem", [
    (lambda t: section_emptied("PAT"), "section PAT missing or empty"),
    (lambda t: in_station(t, "<TEMP1>25</TEMP1>", ""), "station STATION1: TEMP missing or empty"),
    (lambda t: replace_once(t, 'SBIN="21"', 'SBIN="12"'),
     "bin table entry 6: SBIN 12 already used by bin table entry 3"),
    (lambda t: in_station(t, "<TESTER1>SCT-81-1F", "<TESTER1>SCT-81-2F"),
     "no STATION entry has TESTER SCT-81-1F"),
], ids=["section", "station-field", "bins", "station"])
def test_skip_verification_keeps_other_checks(tmp_path, mutate, problem):
    with pytest.raises(JobError) as info:
        load_text(tmp_path, mutate(FIXTURE_TEXT), skip_verification=True)
    assert str(info.value) == f"job file {FILE}: {problem}"


# --------------------------------------------------------------------------------------
# File lookup (5.1)


def test_dotless_name_used_when_verbatim_missing(tmp_path):
    write_job(tmp_path, FIXTURE_TEXT, "le306426001.xml")
    job = make_source(tmp_path).load(LOT)
    assert os.path.basename(job.path) == "le306426001.xml"


def test_verbatim_name_preferred(tmp_path):
    write_job(tmp_path, FIXTURE_TEXT, "le306426001.xml")
    write_job(tmp_path, FIXTURE_TEXT, "le306426.001.xml")
    job = make_source(tmp_path).load(LOT)
    assert os.path.basename(job.path) == "le306426.001.xml"


def test_wrong_file_caught_by_lot_check(tmp_path):
    # "30642.6001" falls back to the dotless name of a different lot; LOTNUMBER catches it.
    write_job(tmp_path, FIXTURE_TEXT, "le306426001.xml")
    with pytest.raises(JobError, match="LOTNUMBER is 306426.001, expected 30642.6001"):
        make_source(tmp_path).load("30642.6001")


def test_not_found_message(tmp_path):
    with pytest.raises(JobError) as info:
        make_source(tmp_path).load(LOT)
    assert str(info.value) == (
        "job file for lot 306426.001 not found (tried le306426.001.xml, le306426001.xml)"
    )


def test_not_found_without_dot_tries_once(tmp_path):
    with pytest.raises(JobError) as info:
        make_source(tmp_path).load("306426001")
    assert str(info.value) == "job file for lot 306426001 not found (tried le306426001.xml)"


def test_missing_directory_is_not_found(tmp_path):
    with pytest.raises(JobError, match="not found"):
        make_source(tmp_path / "nope").load(LOT)


def test_directory_with_job_name_is_not_a_job(tmp_path):
    (tmp_path / "le306426.001.xml").mkdir()
    with pytest.raises(JobError, match="not found"):
        make_source(tmp_path).load(LOT)


def test_fixed_pattern_without_placeholder(tmp_path):
    write_job(tmp_path, FIXTURE_TEXT)
    source = FilesystemSource(str(tmp_path), FILE, device_id=DEVICE, handler_id=HANDLER)
    assert source.candidates(LOT) == (FILE,)
    assert source.load(LOT).lot_number == LOT


def test_empty_pattern_refused(tmp_path):
    with pytest.raises(JobError, match="filesystemdatasource_jobpattern is empty"):
        FilesystemSource(str(tmp_path), "", device_id=DEVICE, handler_id=HANDLER)


# --------------------------------------------------------------------------------------
# Lot-number safety


BAD_LOTS = ["", "..", "../306426.001", "a/b", "a\\b", "/etc/passwd", "\\\\server\\share",
            "C:evil", "3064\x0026", "306426\n001", "lot\x7f", "x" * 129, "a..b"]


@pytest.mark.parametrize("lot", BAD_LOTS)
def test_escaping_lot_refused_before_filesystem(tmp_path, monkeypatch, lot):
    source = make_source(tmp_path)

    def forbidden(*args, **kwargs):
        raise AssertionError("filesystem touched")

    monkeypatch.setattr(os.path, "realpath", forbidden)
    monkeypatch.setattr(os.path, "isfile", forbidden)
    with pytest.raises(JobError, match=r"^lot number"):
        source.load(lot)


@pytest.mark.parametrize("lot", [None, 306426, b"306426.001", ["306426.001"]])
def test_non_string_lot_refused(tmp_path, lot):
    with pytest.raises(JobError, match=r"^lot number must be a string, not "):
        make_source(tmp_path).load(lot)  # type: ignore[arg-type]


def test_check_lot_number_accepts_normal_lots():
    for lot in ("306426.001", "306426001", "A-12_3.x", "lot 1"):
        assert check_lot_number(lot) == lot


def test_symlink_escaping_directory_refused(tmp_path):
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    outside = write_job(tmp_path, FIXTURE_TEXT, "secret.xml")
    (jobs / "le306426.001.xml").symlink_to(outside)
    with pytest.raises(JobError) as info:
        make_source(jobs).load(LOT)
    assert str(info.value) == (
        f"job file le306426.001.xml: outside the job directory {jobs}"
    )


def test_pattern_escaping_directory_refused(tmp_path):
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    write_job(tmp_path, FIXTURE_TEXT)
    source = FilesystemSource(str(jobs), "../le#jobname#.xml",
                              device_id=DEVICE, handler_id=HANDLER)
    with pytest.raises(JobError, match="outside the job directory"):
        source.load(LOT)


def test_symlinked_job_directory_allowed(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    write_job(real, FIXTURE_TEXT)
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    assert make_source(tmp_path / "link").load(LOT).lot_number == LOT


# --------------------------------------------------------------------------------------
# Static source and configuration


def config(**overrides) -> types.SimpleNamespace:
    values = dict(jobsource="filesystem", jobformat="xml.semi-ate",
                  filesystemdatasource_path="./jobs", filesystemdatasource_jobpattern=PATTERN,
                  skip_jobdata_verification=False, device_id=DEVICE, handler_id=HANDLER)
    values.update(overrides)
    return types.SimpleNamespace(**values)


def test_static_source_refuses_every_load():
    source = job_source_from_config(config(jobsource="static"))
    assert isinstance(source, StaticSource)
    assert isinstance(source, JobSource)
    for lot in (LOT, "", "../x"):
        with pytest.raises(JobError) as info:
            source.load(lot)
        assert str(info.value) == "job source 'static' provides no test program"


def test_filesystem_source_from_config(tmp_path):
    write_job(tmp_path, FIXTURE_TEXT)
    source = job_source_from_config(config(filesystemdatasource_path=str(tmp_path)))
    assert isinstance(source, FilesystemSource)
    assert source.load(LOT).part_typ == "HS2CQFN16T7A_FT1A"


def test_config_skip_verification_passed_on(tmp_path):
    write_job(tmp_path, replace_once(FIXTURE_TEXT, "<HANDLER_PROBER>HTO92-20F",
                                     "<HANDLER_PROBER>HTO92-21F"))
    strict = job_source_from_config(config(filesystemdatasource_path=str(tmp_path)))
    lenient = job_source_from_config(config(filesystemdatasource_path=str(tmp_path),
                                            skip_jobdata_verification=True))
    with pytest.raises(JobError, match="HANDLER_PROBER is HTO92-21F, expected HTO92-20F"):
        strict.load(LOT)
    assert lenient.load(LOT).lot_number == LOT


@pytest.mark.parametrize("overrides, message", [
    ({"jobsource": "database"},
     "jobsource 'database' unknown, expected 'filesystem' or 'static'"),
    ({"jobformat": "json"}, "jobformat 'json' unknown, expected 'xml.semi-ate'"),
])
def test_bad_config_values(overrides, message):
    with pytest.raises(JobError) as info:
        job_source_from_config(config(**overrides))
    assert str(info.value) == message


# --------------------------------------------------------------------------------------
# Robustness: bad input gives JobError, never another exception


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash(data):
    try:
        job_from_xml(data, file_name="f.xml", path="f.xml",
                     identity=Identity(LOT, DEVICE, HANDLER))
    except JobError as exc:
        assert str(exc).startswith("job file f.xml: ")


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(FIXTURE_TEXT)), st.integers(0, 40), st.text(max_size=5))
def test_mutated_fixture_never_crashes(start, length, insert):
    text = FIXTURE_TEXT[:start] + insert + FIXTURE_TEXT[start + length:]
    try:
        job = job_from_xml(text.encode("utf-8"), file_name=FILE, path=FILE,
                           identity=Identity(LOT, DEVICE, HANDLER))
    except JobError as exc:
        assert str(exc).startswith(f"job file {FILE}: ")
    else:
        assert job.bins and job.testapp_script_path


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_arbitrary_lot_numbers_never_crash(tmp_path_factory, lot):
    directory = tmp_path_factory.getbasetemp() / "lots"
    directory.mkdir(exist_ok=True)
    try:
        make_source(directory).load(lot)
    except JobError:
        pass
