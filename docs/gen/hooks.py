"""MkDocs hooks (``mkdocs.yml``: ``hooks``): fill the reference pages from the code.

A page marks each generated part with a line ``<!-- reference: NAME -->``; the build replaces
it with :data:`reference.SECTIONS` ``[NAME]``'s Markdown. An unknown name fails the build, and
so does an error in the generator (``mkdocs build --strict`` in test.sh).

The checkout the manual is built from is put first on ``sys.path``, so the reference describes
this tree's code whatever the environment's editable install points at.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from mkdocs.exceptions import PluginError

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import reference  # noqa: E402  (this folder is on sys.path while MkDocs loads a hook)

MARKER = re.compile(r"^<!-- reference: ([a-z0-9-]+) -->$", re.M)


def on_page_markdown(markdown: str, page, config, files) -> str:
    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in reference.SECTIONS:
            raise PluginError(
                f"{page.file.src_uri}: unknown reference section {name!r} (known: "
                f"{', '.join(sorted(reference.SECTIONS))})")
        return reference.SECTIONS[name]()

    return MARKER.sub(fill, markdown)
