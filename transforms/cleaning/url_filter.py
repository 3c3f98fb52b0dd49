"""The `url_filter` stage: drop documents by their URL (C4/RefinedWeb/FineWeb style).

- Blocklists: files of one entry a line (UT1's `domains` and `urls` files; `#` comments and blank
  lines skipped). A line without `/` is a domain: it blocks that host and every subdomain. A line
  with `/` is a URL, blocked exactly (scheme ignored, host normalised, trailing `/` ignored).
- Allow lists: domains (and their subdomains) that are never blocked, by any rule.
- Banned words (RefinedWeb): the URL is split into tokens (runs of letters and digits,
  lowercased); any token from a `hard_words` file blocks it, and `soft_min` (default 3) or more
  tokens from a `soft_words` file (repeats counted) block it.

Hosts are normalised before matching: lowercase, `www.` stripped, port and trailing dot removed,
internationalised names as IDNA ASCII (`xn--...`). Matching is a set lookup per host suffix (a
host has a handful of labels), so a batch costs one URL parse per row.

Reasons: `url_blocklist:<list>` where `<list>` is the file's stem, or for UT1's layout
(`adult/domains`, `adult/urls`) the category folder (`adult`); `url_banned_words`. Documents
without a URL are kept and counted (`url_filter.no_url`).
"""
from __future__ import annotations

import re
from dataclasses import field
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

from apache_beam.io.filesystems import FileSystems

from transforms.core.accounting import count
from transforms.core.config import ConfigError, config_dataclass
from transforms.core.documents import URL
from transforms.core.scoring import ScoreBatchFn, Scored, ScoringStage
from transforms.core.stage import Contract

BANNED_WORDS = "url_banned_words"
_TOKEN = re.compile(r"[^\W_]+")
_UT1_FILES = {"domains", "urls", "domains.txt", "urls.txt"}


@config_dataclass
class UrlFilterConfig:
    blocklist: list[str] = field(default_factory=list)   # files: domains (+ subdomains) or URLs
    allowlist: list[str] = field(default_factory=list)   # files of domains never blocked
    hard_words: list[str] = field(default_factory=list)  # files: any of these URL tokens blocks
    soft_words: list[str] = field(default_factory=list)  # files: `soft_min` or more of these block
    soft_min: int = 3
    column: str = URL


def normalise_host(host: Optional[str]) -> Optional[str]:
    """Lowercase, no port, no trailing dot, no leading `www.`, IDNA ASCII; None if empty."""
    if not host:
        return None
    host = host.strip().lower()
    host = host.rsplit("@", 1)[-1]
    if host.startswith("[") or host.count(":") > 1:  # an IPv6 literal
        return host.strip("[]").split("]")[0] or None
    host = host.split(":")[0].rstrip(".")
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            pass  # not a valid IDN: matched as written
    while host.startswith("www."):
        host = host[4:]
    return host or None


def _split(url: str):
    url = url.strip().strip("<>").strip()  # WARC/1.0 writers (wget) put WARC-Target-URI in <>
    if "://" not in url and not url.startswith("//"):
        url = "http://" + url  # UT1 `urls` entries have no scheme
    try:
        return urlsplit(url)
    except ValueError:
        return None


def url_host(url: str) -> Optional[str]:
    parts = _split(url)
    if parts is None:
        return None
    try:
        return normalise_host(parts.hostname or parts.netloc)
    except ValueError:
        return None


def normalise_url(url: str) -> Optional[str]:
    """Host (normalised) + path (+ `?query`), scheme and fragment dropped, trailing `/` removed."""
    parts = _split(url)
    if parts is None:
        return None
    try:
        host = normalise_host(parts.hostname or parts.netloc)
    except ValueError:
        return None
    if host is None:
        return None
    path = parts.path.rstrip("/")
    return host + path + (f"?{parts.query}" if parts.query else "")


def host_suffixes(host: str) -> list[str]:
    """`a.b.example.com` -> [a.b.example.com, b.example.com, example.com, com]."""
    labels = host.split(".")
    return [".".join(labels[i:]) for i in range(len(labels))]


def list_name(path: str) -> str:
    p = Path(path)
    return p.parent.name if p.name in _UT1_FILES and p.parent.name else p.stem


def read_lines(path: str) -> list[str]:
    if not FileSystems.exists(path):
        raise ConfigError(f"url_filter: list file '{path}' does not exist")
    with FileSystems.open(path) as f:
        text = f.read().decode("utf-8", "replace")
    return [line.strip() for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


class UrlLists:
    """The loaded lists (once per worker process): domain -> list name, URL -> list name,
    allowed domains, hard and soft words."""

    def __init__(self, config: UrlFilterConfig):
        self.domains: dict[str, str] = {}
        self.urls: dict[str, str] = {}
        for path in config.blocklist:
            name = list_name(path)
            for entry in read_lines(path):
                if "/" in entry.split("://", 1)[-1]:
                    key = normalise_url(entry)
                    if key:
                        self.urls.setdefault(key, name)
                else:
                    key = url_host(entry)
                    if key:
                        self.domains.setdefault(key, name)
        self.allowed = {h for path in config.allowlist for h in map(url_host, read_lines(path)) if h}
        self.hard = {w.lower() for path in config.hard_words for w in read_lines(path)}
        self.soft = {w.lower() for path in config.soft_words for w in read_lines(path)}
        self.soft_min = config.soft_min

    def verdict(self, url: str) -> Optional[tuple[str, str]]:
        """(reason, detail) when the URL is blocked, else None."""
        host = url_host(url)
        suffixes = host_suffixes(host) if host else []
        if any(s in self.allowed for s in suffixes):
            return None
        for suffix in suffixes:
            name = self.domains.get(suffix)
            if name is not None:
                return f"url_blocklist:{name}", f"domain {suffix}"
        if self.urls:
            key = normalise_url(url)
            name = self.urls.get(key) if key else None
            if name is not None:
                return f"url_blocklist:{name}", f"url {key}"
        if self.hard or self.soft:
            tokens = _TOKEN.findall(url.lower())
            hard = [t for t in tokens if t in self.hard]
            if hard:
                return BANNED_WORDS, f"hard word {hard[0]!r}"
            soft = [t for t in tokens if t in self.soft]
            if self.soft and len(soft) >= self.soft_min:
                return BANNED_WORDS, f"{len(soft)} soft words {soft[:5]}"
        return None


class UrlFilterFn(ScoreBatchFn):
    stage = "url_filter"

    def load_model(self):
        return UrlLists(self.config)

    def score(self, batch) -> Scored:
        n = batch.num_rows
        index = batch.schema.get_field_index(self.config.column)
        urls = batch.column(index).to_pylist() if index >= 0 else [None] * n
        reasons: list = [None] * n
        details = [""] * n
        seen: dict[str, Optional[tuple[str, str]]] = {}
        missing = 0
        for i, url in enumerate(urls):
            if not isinstance(url, str) or not url.strip():
                missing += 1
                continue
            if url not in seen:
                seen[url] = self.model.verdict(url)
            verdict = seen[url]
            if verdict is not None:
                reasons[i], details[i] = verdict[0], f"{verdict[1]} ({url[:500]})"
        count("url_filter.no_url", missing)
        return Scored(drop_reasons=reasons, details=details)


class UrlFilter(ScoringStage):
    """Drop documents whose URL is blocklisted or carries banned words (module docstring)."""

    Config = UrlFilterConfig

    def __init__(self, config: UrlFilterConfig, context=None):
        super().__init__(config, context)
        if not (config.blocklist or config.hard_words or config.soft_words):
            raise ConfigError("url_filter: give at least one of blocklist, hard_words, soft_words")
        if config.soft_min < 1:
            raise ConfigError("url_filter: soft_min must be at least 1")
        for path in (*config.blocklist, *config.allowlist, *config.hard_words,
                     *config.soft_words):
            if not FileSystems.exists(path):
                raise ConfigError(f"url_filter: list file '{path}' does not exist")

    def contract(self) -> Contract:
        # documents without the column are kept: it is optional (ingest always provides `url`)
        return Contract(reads=(), optional=(self.config.column,))

    def score_fn(self) -> UrlFilterFn:
        return UrlFilterFn(self.config)
