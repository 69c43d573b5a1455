"""PII redaction: e-mail addresses, IPv4/IPv6 addresses and phone numbers become placeholder
tokens; each replacement is counted per kind (`pii.email`, `pii.ip`, `pii.phone`)."""
from __future__ import annotations

import ipaddress
import re

from ..config import PIIConfig
from .base import Doc, Step

# An e-mail address is what r"\b[\w.+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}\b" matches. As a regex that is
# quadratic (every word boundary of a long run of [\w.+-] scans the run again looking for the "@": 100k
# characters of "a.b" took 3.5 min), so emails() finds the same matches from each "@" instead.
_EMAIL_DOMAIN = re.compile(r"(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}\b")


def _word(c: str) -> bool:
    return c.isalnum() or c == "_"  # what \w matches


def emails(text: str) -> list[tuple[int, int]]:
    """Spans of the e-mail addresses in `text`, left to right, not overlapping, in time linear in its length."""
    spans: list[tuple[int, int]] = []
    resume, at = 0, text.find("@")
    while at != -1:
        start = at  # the local part: the run of [\w.+-] before the "@", from its first word boundary
        while start > resume and (_word(text[start - 1]) or text[start - 1] in ".+-"):
            start -= 1
        while start < at and (start > 0 and _word(text[start - 1])) == _word(text[start]):
            start += 1
        domain = _EMAIL_DOMAIN.match(text, at + 1) if start < at else None
        if domain:
            spans.append((start, domain.end()))
            resume = domain.end()
        at = text.find("@", max(at + 1, resume))
    return spans
IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.]|\.\d)")
IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
# Phone numbers written with separators, the way people write them:
#   international  +CC, an optional (0) or (area), digit groups: +44 20 7946 0958, +49 (0)30 1234567
#   national       trunk 0 (or 00 + country) and digit groups: 020 7946 0958, 030/123456, 01.23.45.67.89,
#                  06-12345678, (030) 1234567, 0044 20 7946 0958
#   North American (415) 555-0132, 555-123-4567
# Bare digit runs (ids, years, prices) are left alone; a match that ends where a longer dotted or
# dashed number goes on (dates, versions, ISBNs) is not one, and _phone_digits_ok bounds the digits.
_GROUP = r"(?:\(0\)|\(\d{1,5}\)|\d++)"  # possessive: no backtracking through the ways to split a digit run
PHONE = re.compile(
    r"(?<![\w+./-])(?:"
    rf"\+\d{{1,3}}(?:[ .\-/]?{_GROUP}){{1,7}}"
    r"|\(?0\d{1,4}+\)?(?:[ .\-/]\d{2,8}+){1,5}"
    r"|\(\d{3}\)\s?\d{3}[\s.-]\d{4}|\d{3}[.-]\d{3}[.-]\d{4}"
    r")(?![\w:]|[.,/-]\d)"
)


def _phone_digits_ok(match: re.Match) -> bool:
    """E.164 allows at most 15 digits; a national number with its trunk 0 has 9 at least (8-digit
    dotted dates such as 01.02.2023 are not phones), an international one 8 ((0) not counted).
    No country code, area code after a trunk 0 or North American area code starts with 0, so runs
    of zeros such as 00.0000.00.00 are not numbers."""
    text = match.group(0)
    digits = "".join(c for c in text.replace("(0)", "") if c.isdigit())
    trunk = 0 if text.startswith("+") else 2 if digits.startswith("00") else 1 if digits.startswith("0") else 0
    return (8 if text.startswith("+") else 9 if trunk else 10) <= len(digits) <= 15 and digits[trunk:][:1] != "0"


def _valid_ip(match: re.Match) -> bool:
    try:
        ip = ipaddress.ip_address(match.group(0))
    except ValueError:
        return False
    return not ip.is_unspecified


class PII(Step):
    name = "pii"

    def __init__(self, cfg: PIIConfig):
        super().__init__()
        self.cfg = cfg

    def _sub(self, pattern: re.Pattern, kind: str, token: str, text: str, check=None) -> str:
        def replace(m: re.Match) -> str:
            if check and not check(m):
                return m.group(0)
            self.stats[f"pii.{kind}"] += 1
            return token

        return pattern.sub(replace, text)

    def __call__(self, doc: Doc) -> str | None:
        cfg, text = self.cfg, doc.text
        if "@" in text and (spans := emails(text)):
            self.stats["pii.email"] += len(spans)
            ends = [0] + [end for _, end in spans]
            text = "".join(text[a:start] + cfg.email for a, (start, _) in zip(ends, spans)) + text[ends[-1]:]
        text = self._sub(IPV4, "ip", cfg.ip, text, _valid_ip)
        if "::" in text or text.count(":") >= 7:
            text = self._sub(IPV6, "ip", cfg.ip, text, _valid_ip)
        text = self._sub(PHONE, "phone", cfg.phone, text, _phone_digits_ok)
        if text != doc.text:
            doc.text = text
        return None
