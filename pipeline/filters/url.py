"""URL filter: a domain block-list (a file with one domain per line, `#` comments, and/or a list in
config; a blocked domain blocks its subdomains) and banned substrings of the URL."""
from __future__ import annotations

from urllib.parse import urlsplit

import fsspec

from ..config import URLFilterConfig
from .base import Doc, Step


def load_blocklist(url: str) -> set[str]:
    with fsspec.open(url, "rt", encoding="utf-8", compression="infer") as f:
        return {line.split("#", 1)[0].strip().lower().rstrip(".") for line in f} - {""}


def host_of(url: str) -> str:
    try:
        host = urlsplit(url if "//" in url else "//" + url).hostname or ""
    except ValueError:
        return ""
    return host.lower().rstrip(".")


class URLFilter(Step):
    name = "url"

    def __init__(self, cfg: URLFilterConfig):
        super().__init__()
        self.domains = {d.lower() for d in cfg.blocked_domains}
        if cfg.blocklist_file:
            self.domains |= load_blocklist(cfg.blocklist_file)
        self.banned = [s.lower() for s in cfg.banned_substrings]

    def __call__(self, doc: Doc) -> str | None:
        if not doc.url:
            return None
        host = host_of(doc.url)
        labels = host.split(".")
        if any(".".join(labels[i:]) in self.domains for i in range(len(labels))):
            return self.reason("blocked_domain")
        lowered = doc.url.lower()
        if any(s in lowered for s in self.banned):
            return self.reason("banned_substring")
        return None
