"""docs/index.md's sections that repeat the README (what selfsup is, installing and the demo, which method):
copied from the README, its links made relative to docs/, so that the two pages state the same figures."""

from __future__ import annotations

import re

# <!-- shared:NAME --> ... <!-- /shared:NAME -->, in README.md (the source) and docs/index.md (the copy).
SECTION = re.compile(r"<!-- shared:([\w-]+) -->\n(.*?)<!-- /shared:\1 -->", re.S)


def sections(text: str) -> dict[str, str]:
    """NAME -> the text between a page's markers of that name."""
    return {name: body for name, body in SECTION.findall(text)}


def for_docs(markdown: str) -> str:
    """README text as docs/ sees it: links into docs/ made relative to it."""
    return re.sub(r"\]\(docs/", "](", markdown)


def index_page(readme: str, index: str) -> str:
    """``index`` with each of its shared sections replaced by the README's (every one it names must exist there)."""
    source = sections(readme)
    missing = sorted(set(sections(index)) - set(source))
    if missing:
        raise ValueError(f"docs/index.md shares {', '.join(missing)}, which README.md does not mark "
                         "(<!-- shared:NAME --> ... <!-- /shared:NAME -->)")
    return SECTION.sub(lambda m: f"<!-- shared:{m[1]} -->\n{for_docs(source[m[1]])}<!-- /shared:{m[1]} -->", index)
