"""PII redaction: e-mail addresses, IPv4/IPv6 addresses and phone numbers become placeholder
tokens; each replacement is counted per kind (`pii.email`, `pii.ip`, `pii.phone`)."""
from __future__ import annotations

import ipaddress
import re

from ..config import PIIConfig
from .base import Doc, Step

EMAIL = re.compile(r"\b[\w.+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}\b")
IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.]|\.\d)")
IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
# International (+CC ...) or North-American style numbers with separators; bare digit runs (ids,
# years, prices) are left alone.
PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[\s.-]?(?:\(\d{1,4}\)[\s.-]?)?\d{1,4}(?:[\s.-]\d{2,4}){2,4}"
    r"|\(\d{3}\)\s?\d{3}[\s.-]\d{4}|\d{3}[.-]\d{3}[.-]\d{4})(?!\w)"
)


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
        if "@" in text:
            text = self._sub(EMAIL, "email", cfg.email, text)
        text = self._sub(IPV4, "ip", cfg.ip, text, _valid_ip)
        if "::" in text or text.count(":") >= 7:
            text = self._sub(IPV6, "ip", cfg.ip, text, _valid_ip)
        text = self._sub(PHONE, "phone", cfg.phone, text)
        if text != doc.text:
            doc.text = text
        return None
