"""Peer-standard cleaning stages: `url_filter` (blocklists, banned URL words), `line_dedup`
(corpus-wide repeated lines or paragraphs), `pii` (typed placeholders for e-mails, IPs, phone
numbers) and `substring_dedup` (exact repeated spans via a suffix array). See docs/cleaning.md."""
