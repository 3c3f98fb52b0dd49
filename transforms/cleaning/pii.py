"""The `pii` stage: e-mail addresses, IP addresses and phone numbers replaced by typed placeholders
(`<EMAIL>`, `<IP>`, `<PHONE>`; optionally `<CREDIT_CARD>`, `<IBAN>`), as Dolma and FineWeb do.

Each detector is a regular expression for candidates followed by a validation that keeps false
positives low:

- e-mail: `local@domain.tld` with a letters-only TLD of 2+ characters.
- IPv4: four dot-separated numbers, each 0-255 without leading zeros (`ipaddress.IPv4Address`),
  not glued to a letter, digit or `.digit` on either side: `v1.2.3.4`, `1.2.3.4.5`, `10.0.0.1a`
  and dates (`12.05.2013`, three parts) are not IPs. A bare `1.2.3.4` in prose is one.
- IPv6: hex groups with colons, at least three non-empty groups and one digit, validated by
  `ipaddress.IPv6Address` (so times `10:30:00`, MACs and `std::vector` are not IPs).
- phone: digit groups with separators (space, `-`, `.`, `(...)`) or a leading `+`, 7-15 digits,
  validated with Google's libphonenumber metadata (`phonenumbers.is_valid_number`): numbers with
  `+` in any country, others in `phone_regions` (default US, GB). Bare digit runs without any
  separator are not taken as phones (ids, prices, ISBN fragments), nor are dates or ranges that
  fail validation (`2013-07-03`, `1990-2000`, `12345-6789`).
- credit card (`credit_cards: true`): 13-19 digits in groups, Luhn checksum.
- IBAN (`ibans: true`): country code, check digits, 11-30 alphanumerics, ISO 7064 mod-97.

Counts per type go to Beam metrics (`pii.email`, `pii.ip`, `pii.phone`, ...) and to one int
column per type (`pii_email`, `pii_ip`, `pii_phone`, ...). Text without a detection is returned
unchanged (the same string). An optional Presidio backend for names is not implemented.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import field
from typing import Optional

from transforms.core.accounting import count
from transforms.core.config import ConfigError, config_dataclass
from transforms.core.documents import TEXT
from transforms.core.extras import require
from transforms.core.scoring import ScoreBatchFn, Scored, ScoringStage
from transforms.core.stage import Contract

EMAIL, IP, PHONE, CARD, IBAN = "email", "ip", "phone", "credit_card", "iban"
PLACEHOLDERS = {EMAIL: "<EMAIL>", IP: "<IP>", PHONE: "<PHONE>", CARD: "<CREDIT_CARD>",
                IBAN: "<IBAN>"}

_EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}"
    r"[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![A-Za-z0-9-])")
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\w|\.\d)")
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{0,4}|"
                   r"(?:\d{1,3}\.){3}\d{1,3})(?![\w:]|\.\d)")
# phone candidates: an optional +country code, then 2-5 digit groups joined by separators
_PHONE = re.compile(r"(?<![\w+.,/-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,5}\)[ .-]?)?\d{1,5}"
                    r"(?:[ .-]\(?\d{1,5}\)?){0,5}(?![\w-]|[.,:/]\d)")
_DATE = re.compile(r"\(?(?:\d{4}[-./ ]\d{1,2}[-./ ]\d{1,2}|\d{1,2}[-./ ]\d{1,2}[-./ ]\d{2,4})"
                   r"(?:\D|$)")
_CARD = re.compile(r"(?<![\w-])\d{4}(?:[ -]?\d{2,4}){2,4}(?:[ -]?\d{1,4})?(?![\w-])")
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?"
                   r"(?![A-Za-z0-9])")


@config_dataclass
class PiiConfig:
    emails: bool = True
    ips: bool = True
    phones: bool = True
    credit_cards: bool = False
    ibans: bool = False
    phone_regions: list[str] = field(default_factory=lambda: ["US", "GB"])
    column_prefix: str = "pii_"


def valid_ipv4(candidate: str) -> bool:
    try:
        ipaddress.IPv4Address(candidate)
    except ValueError:
        return False
    return True


def valid_ipv6(candidate: str) -> bool:
    groups = [g for g in candidate.split(":") if g]
    if len(groups) < 3 or not any(c.isdigit() for c in candidate):
        return False
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    return True


def luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def valid_card(candidate: str) -> bool:
    digits = re.sub(r"\D", "", candidate)
    return 13 <= len(digits) <= 19 and len(set(digits)) > 1 and luhn(digits)


def valid_iban(candidate: str) -> bool:
    compact = candidate.replace(" ", "")
    if not 15 <= len(compact) <= 34:
        return False
    moved = compact[4:] + compact[:4]
    number = "".join(str(int(ch, 36)) for ch in moved)
    return int(number) % 97 == 1


class PhoneValidator:
    def __init__(self, regions: list[str]):
        import phonenumbers

        self.phonenumbers = phonenumbers
        self.regions = regions
        self.trunk = {r: phonenumbers.ndd_prefix_for_region(r, True) for r in regions}

    def __call__(self, candidate: str) -> bool:
        digits = sum(ch.isdigit() for ch in candidate)
        if not 7 <= digits <= 15:
            return False
        stripped = candidate.strip()
        if not stripped.startswith("+") and not re.search(r"[ .()\-]", stripped):
            return False  # a bare digit run: an id, a price, a count
        if _DATE.match(stripped):
            return False  # 2002-04-23, 12.05.2013
        pn = self.phonenumbers
        international = stripped.startswith("+")
        leading = re.sub(r"\D", "", stripped)[:1]
        for region in ([None] if international else self.regions):
            # a national number is written with its trunk prefix where the region has "0"
            # (GB: 020 7946 0958): "80000 5500" is not a British number as written
            if not international and self.trunk.get(region) == "0" and leading != "0":
                continue
            try:
                number = pn.parse(stripped, region)
            except pn.NumberParseException:
                continue
            if pn.is_valid_number(number):
                return True
        return False


class Redactor:
    """The configured detectors, in order: e-mail, IBAN, IPv6, IPv4, credit card, phone (each
    pass sees the placeholders of the earlier ones, which hold no digits)."""

    def __init__(self, config: PiiConfig):
        self.passes = []
        if config.emails:
            self.passes.append((EMAIL, _EMAIL, None))
        if config.ibans:
            self.passes.append((IBAN, _IBAN, valid_iban))
        if config.ips:
            self.passes.append((IP, _IPV6, valid_ipv6))
            self.passes.append((IP, _IPV4, valid_ipv4))
        if config.credit_cards:
            self.passes.append((CARD, _CARD, valid_card))
        if config.phones:
            self.passes.append((PHONE, _PHONE, PhoneValidator(config.phone_regions)))
        self.types = list(dict.fromkeys(kind for kind, _, _ in self.passes))

    def __call__(self, text: str) -> tuple[str, dict[str, int]]:
        """(text with placeholders, count per type); the same string when nothing matched."""
        counts = dict.fromkeys(self.types, 0)
        for kind, pattern, validate in self.passes:
            if kind == EMAIL and "@" not in text:
                continue
            found = 0

            def replace(match, kind=kind, validate=validate):
                nonlocal found
                if validate is None or validate(match.group(0)):
                    found += 1
                    return PLACEHOLDERS[kind]
                return match.group(0)

            new = pattern.sub(replace, text)
            if found:
                text = new
                counts[kind] += found
        return text, counts


def redact(text: str, config: Optional[PiiConfig] = None) -> tuple[str, dict[str, int]]:
    """One document: the pure function behind the stage."""
    return Redactor(config or PiiConfig())(text)


class PiiFn(ScoreBatchFn):
    stage = "pii"

    def load_model(self):
        return Redactor(self.config)

    def score(self, batch) -> Scored:
        redactor = self.model
        texts = batch.column(TEXT).to_pylist()
        out, columns = [], {kind: [] for kind in redactor.types}
        for text in texts:
            if text is None:
                new, counts = None, dict.fromkeys(redactor.types, 0)
            else:
                new, counts = redactor(text)
            out.append(new)
            for kind in redactor.types:
                columns[kind].append(counts[kind])
        for kind, values in columns.items():
            count(f"pii.{kind}", sum(values))
        prefix = self.config.column_prefix
        return Scored(columns={TEXT: out, **{f"{prefix}{k}": v for k, v in columns.items()}})


class Pii(ScoringStage):
    """Replace personal data by typed placeholders (module docstring)."""

    Config = PiiConfig

    def __init__(self, config: PiiConfig, context=None):
        super().__init__(config, context)
        if config.phones:
            require("cleaning", "phonenumbers", by="stage 'pii' (phones: true)")
        if not any((config.emails, config.ips, config.phones, config.credit_cards, config.ibans)):
            raise ConfigError("pii: every detector is off")

    def contract(self) -> Contract:
        kinds = [k for k, on in ((EMAIL, self.config.emails), (IP, self.config.ips),
                                 (CARD, self.config.credit_cards), (IBAN, self.config.ibans),
                                 (PHONE, self.config.phones)) if on]
        return Contract(writes=tuple(f"{self.config.column_prefix}{k}" for k in kinds))

    def score_fn(self) -> PiiFn:
        return PiiFn(self.config)
