"""The held-out real pages the cleaning tests measure on: Common Crawl / wget WARC and WET pages
with their real URLs (../shared/data/web_samples) and the 499 DCLM human-labelled Common Crawl
pages (../shared/data/dclm_quality, no URLs), plus what the tests paste into them."""
from __future__ import annotations

import glob
import gzip
import json
import random
import re
from pathlib import Path

from transforms.core.documents import content_id
from transforms.io.ingest import read_warc, read_wet


def real_pages(shared: Path) -> list[dict]:
    web = shared / "web_samples"
    pages = []
    warcs = sorted(glob.glob(str(web / "resiliparse/tests/data/*.warc.gz"))
                   + glob.glob(str(web / "dolma/tests/data/warc/*.warc.gz"))
                   + glob.glob(str(web / "cc_whirlwind/*.warc.gz")))
    for path in warcs:
        pages += [{"text": r["text"], "url": r["url"]} for r in read_warc(path)
                  if isinstance(r, dict)]
    pages += [{"text": r["text"], "url": r["url"]}
              for r in read_wet(str(web / "cc_whirlwind/whirlwind.warc.wet")) if isinstance(r, dict)]
    for path in sorted(glob.glob(str(web / "dolma/tests/data/multiple_files/*.jsonl"))):
        with open(path, encoding="utf-8") as f:
            pages += [{"text": d["text"], "url": d["id"]} for d in map(json.loads, f)]
    with gzip.open(web / "dolma/tests/data/provided/documents/000.json.gz", "rt") as f:
        pages += [{"text": d["text"], "url": d["id"]} for d in map(json.loads, f)]
    with open(shared / "dclm_quality/majority_data.jsonl", encoding="utf-8") as f:
        pages += [{"text": d["text"], "url": None} for d in map(json.loads, f)]
    out, seen = [], set()
    for page in pages:
        doc_id = content_id((page["url"] or "") + "\0" + page["text"])
        if page["text"].strip() and doc_id not in seen:
            seen.add(doc_id)
            out.append({"id": doc_id, "text": page["text"], "url": page["url"], "source": "web"})
    return out


BOILERPLATE = [
    "Copyright © {year} All rights reserved.",
    "Subscribe to our newsletter to get the latest updates!",
    "This website uses cookies to improve your experience. Accept",
    "Share this: Facebook | Twitter | Pinterest | Email",
    "Posted in Uncategorized | {n} Comments",
]


def paste_boilerplate(docs: list[dict], rng: random.Random, share: float = 0.4) -> dict[int, list]:
    """Each boilerplate line (years and counts varied per page: they normalise alike) pasted
    into `share` of the documents at a random line position; returns {line index: doc ids}."""
    pasted: dict[int, list] = {i: [] for i in range(len(BOILERPLATE))}
    for doc in docs:
        lines = doc["text"].split("\n")
        for i, template in enumerate(BOILERPLATE):
            if rng.random() < share:
                line = template.format(year=rng.randint(1998, 2024), n=rng.randint(10, 99))
                lines.insert(rng.randint(0, len(lines)), line)
                pasted[i].append(doc["id"])
        doc["text"] = "\n".join(lines)
    return pasted


def boilerplate_pattern(i: int) -> re.Pattern:
    parts = re.split(r"\{\w+\}", BOILERPLATE[i])
    return re.compile(r"\d+".join(map(re.escape, parts)))


def has_boilerplate(text: str, i: int) -> bool:
    """Whether a whole line of `text` is boilerplate line `i` (as pasted)."""
    pattern = boilerplate_pattern(i)
    return any(pattern.fullmatch(line.strip()) for line in text.split("\n"))


def fake_pii(rng: random.Random) -> list[tuple[str, str]]:
    """(kind, value) pairs, every value distinct, in the formats pages write them."""
    user = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(4, 9)))
    domain = rng.choice(["gmail.com", "example.org", "mail.uni-bonn.de", "yahoo.co.uk"])
    area = rng.choice([212, 415, 617, 312, 503, 720])
    exchange, line = rng.randint(200, 989), rng.randint(1000, 9999)
    phone = rng.choice([f"({area}) {exchange}-{line}", f"{area}-{exchange}-{line}",
                        f"{area}.{exchange}.{line}", f"+1 {area} {exchange} {line}",
                        f"+44 20 7946 {rng.randint(1000, 9999)}", f"020 7946 {rng.randint(1000, 9999)}"])
    ipv4 = ".".join(str(rng.randint(1, 254)) for _ in range(4))
    ipv6 = f"2001:db8:{rng.randint(1, 0xffff):x}::{rng.randint(1, 0xffff):x}"
    return [("email", f"{user}.{rng.randint(1, 99)}@{domain}"), ("phone", phone), ("ip", ipv4),
            ("ip", ipv6)]


PLACEHOLDER = {"email": "<EMAIL>", "phone": "<PHONE>", "ip": "<IP>"}

# an independent, deliberately broad notion of "looks like it may hold PII": documents matching
# none of these are the negatives the false-positive rate is measured on
MAYBE_PII = re.compile(r"@|\+\d|\d{3}[\s.)-]+\d{3}[\s.-]+\d{4}|\b0\d{2,4}[\s-]\d{3,4}[\s-]\d{3,4}"
                       r"|\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}|[0-9a-fA-F]{1,4}::?[0-9a-fA-F]{1,4}:")
