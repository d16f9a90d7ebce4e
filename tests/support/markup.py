"""
An HTML page read back for tests: its tags and text, and whether its
elements nest.
"""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any, List, Tuple


class Page(HTMLParser):
    """
    Collects a page's tags and text, and checks that elements nest.
    """

    VOID = {"meta", "br", "hr", "img", "input", "link"}

    def __init__(self) -> None:
        super().__init__()
        self.tags: List[str] = []
        self.text: List[str] = []
        self.open: List[str] = []
        self.errors: List[str] = []

    def handle_starttag(self, tag: str, attrs: List[Tuple[str, Any]]) -> None:
        self.tags.append(tag)
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_startendtag(self, tag: str, attrs: List[Tuple[str, Any]]) -> None:
        # <meta ... />: a void element, closed where it opens.
        self.tags.append(tag)
        if tag not in self.VOID:
            self.errors.append(f"<{tag} /> is not a void element")

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.open[-1:] or 'nothing'}")
        else:
            self.open.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(page: bytes) -> Page:
    parser = Page()
    parser.feed(page.decode("utf-8"))
    parser.close()
    return parser
