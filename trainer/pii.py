"""Finds personal data in free text and redacts it: e-mail addresses, phone numbers, payment
card numbers, IBANs, US social security numbers and IP addresses.

Candidates are found by RE2 patterns (linear time on any input) and kept only when a maintained
checker accepts them: phonenumbers (Google's libphonenumber) finds and validates phone numbers,
python-stdnum checks card numbers (Luhn), IBANs (country length and mod 97) and SSNs, and the
standard `ipaddress` module checks addresses. A kept match is replaced by its kind's
placeholder ("[EMAIL]"); the matched text itself is never returned or logged. Pure: no I/O.

One module for every place personal data can enter adapterd: training data (`data.pii`) and
captured traffic.
"""

import string
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from ipaddress import IPv4Address, IPv6Address
from typing import Any

import phonenumbers
import re2  # type: ignore[import-untyped]
from phonenumbers import Leniency
from stdnum import iban, luhn
from stdnum.us import ssn


class PiiKind(StrEnum):
    """What a redaction replaced; the values are the keys of every count we report."""

    EMAIL = "email"
    PHONE = "phone"
    CARD = "card"
    IBAN = "iban"
    SSN = "ssn"
    IP = "ip"

    @property
    def placeholder(self) -> str:
        """What the text says instead: "[EMAIL]"."""
        return f"[{self.name}]"


PHONE_REGIONS = ("US", "GB", "DE", "FR")
"""Regions whose national formats (without +country code) count as phone numbers; a number in
international format is found whatever its region. Matched with strict grouping: at the
library's default leniency, arithmetic such as "350-262" in GSM8K's answers is a valid German
number and "60000 - 10800" an Indian one (India's national format stays too lax even so)."""

_EMAIL = r"[\pL\pN._%+-]+@[\pL\pN-]+(?:\.[\pL\pN-]+)*\.\pL{2,}"
_CARD = r"\b\d(?:[ -]?\d){12,18}\b"
_IBAN = r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b"
_SSN = r"\b\d{3}-\d{2}-\d{4}\b"
_IPV4 = r"\b\d{1,3}(?:\.\d{1,3}){3}\b"
_IPV6 = r"[0-9A-Fa-f]*:[0-9A-Fa-f:.]*:[0-9A-Fa-f.]*"


def _compile(pattern: str) -> Any:
    options = re2.Options()
    options.log_errors = False
    return re2.compile(pattern, options)


@dataclass(frozen=True)
class Found:
    """One piece of personal data: its kind and where it is (str indices, end exclusive)."""

    kind: PiiKind
    start: int
    end: int


@dataclass(frozen=True)
class Redacted:
    """A text with its personal data replaced, and how many of each kind were."""

    text: str
    counts: Counter[PiiKind]


def _digits(text: str) -> str:
    return "".join(c for c in text if c.isdigit())


CARD_NUMBERS = (
    # (first digits from, to (inclusive, as many digits as written), lengths): the networks'
    # issuer ranges, so a Luhn-valid run of digits that no card could carry is left alone.
    ("4", "4", (13, 16, 19)),  # Visa
    ("51", "55", (16,)),  # Mastercard
    ("2221", "2720", (16,)),  # Mastercard
    ("34", "34", (15,)),  # American Express
    ("37", "37", (15,)),  # American Express
    ("6011", "6011", (16, 17, 18, 19)),  # Discover
    ("644", "649", (16, 17, 18, 19)),  # Discover
    ("65", "65", (16, 17, 18, 19)),  # Discover
    ("3528", "3589", (16, 17, 18, 19)),  # JCB
    ("300", "305", (14, 15, 16, 17, 18, 19)),  # Diners Club
    ("36", "36", (14, 15, 16, 17, 18, 19)),  # Diners Club
    ("38", "39", (16, 17, 18, 19)),  # Diners Club
    ("62", "62", (16, 17, 18, 19)),  # UnionPay
    ("50", "50", (13, 14, 15, 16, 17, 18, 19)),  # Maestro
    ("56", "58", (13, 14, 15, 16, 17, 18, 19)),  # Maestro
)


def _card(candidate: str) -> int:
    digits = _digits(candidate)
    issued = any(
        low <= digits[: len(low)] <= high and len(digits) in lengths
        for low, high, lengths in CARD_NUMBERS
    )
    return len(candidate) if issued and luhn.is_valid(digits) else 0


def _iban(candidate: str) -> int:
    """How much of `candidate` is a valid IBAN (0: none). The pattern may run on into a
    following group of capitals or digits, so shorter prefixes ending at a space are tried."""
    ends = [len(candidate)] + [i for i in range(len(candidate) - 1, 14, -1) if candidate[i] == " "]
    return next((end for end in ends if iban.is_valid(candidate[:end])), 0)


def _ssn(candidate: str) -> int:
    return len(candidate) if ssn.is_valid(candidate) else 0


def _ipv4(candidate: str) -> int:
    try:
        IPv4Address(candidate)
    except ValueError:
        return 0
    return len(candidate)


def _ipv6(candidate: str) -> int:
    candidate = candidate.rstrip(".")  # a full stop after the address
    try:
        IPv6Address(candidate)
    except ValueError:
        return 0
    return len(candidate) if sum(c in HEX_DIGITS for c in candidate) >= 2 else 0


STRICT_GROUPING = Leniency.STRICT_GROUPING
HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_GLUE = frozenset(string.ascii_letters + string.digits + "_:.")
"""Characters an IPv6 candidate may not touch: "std::vector" holds the valid address "d::"."""

_CHECKS: tuple[tuple[PiiKind, Any, Callable[[str], int], bool], ...] = (
    # kind, candidates, how much of a candidate is one (0: none), whether it must stand alone
    (PiiKind.IBAN, _compile(_IBAN), _iban, False),
    (PiiKind.EMAIL, _compile(_EMAIL), len, False),
    (PiiKind.CARD, _compile(_CARD), _card, False),
    (PiiKind.SSN, _compile(_SSN), _ssn, False),
    (PiiKind.IP, _compile(_IPV4), _ipv4, False),
    (PiiKind.IP, _compile(_IPV6), _ipv6, True),
)


def _candidates(text: str) -> Iterator[Found]:
    for kind, pattern, accept, alone in _CHECKS:
        for match in pattern.finditer(text):
            start, end = match.start(), match.end()
            if alone and (text[start - 1 : start] in _GLUE or text[end : end + 1] in _GLUE):
                continue
            if length := accept(match.group()):
                yield Found(kind, start, start + length)
    for region in PHONE_REGIONS:
        for number in phonenumbers.PhoneNumberMatcher(text, region, leniency=STRICT_GROUPING):
            yield Found(PiiKind.PHONE, number.start, number.end)


def find_pii(text: str) -> list[Found]:
    """Every piece of personal data in `text`, in order, none overlapping: where two overlap,
    the one starting first (then the longer; then the earlier in `_CHECKS`) is kept."""
    kept: list[Found] = []
    for found in sorted(_candidates(text), key=lambda f: (f.start, -(f.end - f.start))):
        if not kept or found.start >= kept[-1].end:
            kept.append(found)
    return kept


def redact(text: str) -> Redacted:
    """`text` with each piece of personal data replaced by its kind's placeholder."""
    parts, counts, position = [], Counter[PiiKind](), 0
    for found in find_pii(text):
        parts += [text[position : found.start], found.kind.placeholder]
        counts[found.kind] += 1
        position = found.end
    parts.append(text[position:])
    return Redacted("".join(parts), counts)
