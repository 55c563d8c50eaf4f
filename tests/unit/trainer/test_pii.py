"""Personal data found and redacted, and look-alikes left alone."""

from pathlib import Path

import pytest

from trainer.pii import PiiKind, find_pii, redact

FOUND = [
    ("jane.doe@example.com", PiiKind.EMAIL),
    ("first+tag@sub.example.co.uk", PiiKind.EMAIL),
    ("x_y%z@my-domain.io", PiiKind.EMAIL),
    ("ADMIN@EXAMPLE.ORG", PiiKind.EMAIL),
    ("+1 415-555-2671", PiiKind.PHONE),
    ("(415) 555-2671", PiiKind.PHONE),
    ("+44 20 7946 0958", PiiKind.PHONE),
    ("020 7946 0958", PiiKind.PHONE),
    ("+49 30 901820", PiiKind.PHONE),
    ("+33 1 42 68 53 00", PiiKind.PHONE),
    ("+91 98765 43210", PiiKind.PHONE),
    ("4111 1111 1111 1111", PiiKind.CARD),
    ("5500-0000-0000-0004", PiiKind.CARD),
    ("378282246310005", PiiKind.CARD),
    ("6011111111111117", PiiKind.CARD),
    ("4012888888881881", PiiKind.CARD),
    ("DE89 3704 0044 0532 0130 00", PiiKind.IBAN),
    ("GB82WEST12345698765432", PiiKind.IBAN),
    ("FR14 2004 1010 0505 0001 3M02 606", PiiKind.IBAN),
    ("NL91ABNA0417164300", PiiKind.IBAN),
    ("536-22-1234", PiiKind.SSN),
    ("212-55-4321", PiiKind.SSN),
    ("192.168.1.10", PiiKind.IP),
    ("8.8.8.8", PiiKind.IP),
    ("203.0.113.255", PiiKind.IP),
    ("2001:db8::8a2e:370:7334", PiiKind.IP),
    ("fe80::1", PiiKind.IP),
    ("::ffff:192.0.2.128", PiiKind.IP),
    ("2001:0db8:0000:0000:0000:ff00:0042:8329", PiiKind.IP),
    ("10.0.0.1", PiiKind.IP),
]

LEFT_ALONE = [
    "The meeting is at 10:30:45 today.",
    "std::vector<int> v; std::map::find",
    "version 2.0 of the app",
    "order 1234 shipped",
    "4111 1111 1111 1112 fails its check digit",
    "DE89 3704 0044 0532 0130 01 has a bad checksum",
    "999.1.1.1 is no address",
    "256.256.256.256",
    "user at example dot com",
    "write to me@localhost",
    "the date 2024-05-17",
    "$1,234,567.89",
    "ratio 3:2:1",
    "HH:MM:SS",
    "000-00-0000",
    "666-12-3456",
    "Solve GSM8K: 2+2=4",
    "x = 3.14159",
    "10.5 kg of flour",
    "semver 1.2.3",
    "route 66",
    "id 123e4567-e89b-12d3-a456-426614174000",
    "commit a1b2c3d4",
    "C++ a::b::c chains",
    "localhost:8080",
    "port 50051",
    "Janet has 16 eggs and sells 3 for $2 each.",
    "call 911",
    "1 2 3 4 5 6 7 8 9",
    "ISO 8601 and RFC 3339",
]


@pytest.mark.parametrize(("value", "kind"), FOUND)
def test_personal_data_is_replaced_by_its_placeholder_and_counted(value, kind):
    redacted = redact(f"Reach me: {value}, thanks.")
    assert redacted.text == f"Reach me: {kind.placeholder}, thanks."
    assert redacted.counts == {kind: 1}


@pytest.mark.parametrize("text", LEFT_ALONE)
def test_look_alikes_are_left_alone(text):
    assert find_pii(text) == []
    assert redact(text).text == text


def test_several_kinds_in_one_text_each_counted():
    text = "Mail a@b.io or b@c.io, call +1 415-555-2671, card 4111111111111111."
    redacted = redact(text)
    assert redacted.text == "Mail [EMAIL] or [EMAIL], call [PHONE], card [CARD]."
    assert redacted.counts == {PiiKind.EMAIL: 2, PiiKind.PHONE: 1, PiiKind.CARD: 1}


def test_an_iban_followed_by_capitals_keeps_only_the_valid_part():
    assert redact("IBAN DE89 3704 0044 0532 0130 00 ABCD end").text == "IBAN [IBAN] ABCD end"


def test_positions_are_string_indices_past_non_ascii_text():
    text = "Grüße an jürgen.groß@example.de — danke"
    [found] = find_pii(text)
    assert text[found.start : found.end] == "jürgen.groß@example.de"
    assert redact(text).text == "Grüße an [EMAIL] — danke"


@pytest.mark.timeout(20)
def test_a_long_hostile_text_is_scanned_in_linear_time():
    # A backtracking engine takes quadratic time on many near-misses of the e-mail pattern.
    text = "a" * 200_000 + "@" + "b." * 50_000
    assert redact(text).counts.total() <= 1


def test_gsm8k_arithmetic_is_no_phone_number():
    # At libphonenumber's default leniency "350-262" is a German number and "28980-18480" an
    # American one; the demo's training data must pass through unchanged.
    rows = (Path(__file__).resolve().parents[3] / "data/gsm8k/train_slice.jsonl").read_text()
    assert find_pii(rows) == []
