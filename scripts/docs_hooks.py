"""mkdocs hooks (mkdocs.yml ``hooks:``): links from docs/ to files elsewhere in the repository.

The reports link their figures as ``../benchmarks/results/*.png`` and the guide links ``../examples/*.py``, so
that they work when read on disk or on a code host. Mkdocs only knows files under docs/: this hook adds each
such target to the site under ``repository/<its path>`` and rewrites the link to it. A target that does not
exist is not added, so the rewritten link is reported as broken, like any other (the build is ``--strict``).
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File, Files

REPO = Path(__file__).resolve().parents[1]
PREFIX = "repository"
# the target of a markdown link or image that leaves docs/: ](../path) — optionally with #anchor or "title"
OUTSIDE = re.compile(r"\]\((?P<up>(?:\.\./)+)(?P<rest>[^)\s#]+)")


def _target(page_uri: str, up: str, rest: str) -> str | None:
    """The repository path a link from ``page_uri`` (under docs/) points to, if it leaves docs/."""
    path = posixpath.normpath(posixpath.join("docs", posixpath.dirname(page_uri), up + rest))
    return None if path.startswith(("docs/", "../")) or path == "docs" else path


def on_files(files: Files, config) -> Files:
    for page in [f for f in files if f.src_uri.endswith(".md")]:
        text = Path(page.abs_src_path).read_text(encoding="utf-8")
        for m in OUTSIDE.finditer(text):
            path = _target(page.src_uri, m["up"], m["rest"])
            uri = f"{PREFIX}/{path}"
            if path and (REPO / path).is_file() and files.get_file_from_path(uri) is None:
                files.append(File.generated(config, uri, abs_src_path=str(REPO / path)))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    here = posixpath.dirname(page.file.src_uri)

    def swap(m: re.Match) -> str:
        path = _target(page.file.src_uri, m["up"], m["rest"])
        if path is None:
            return m[0]
        return "](" + posixpath.relpath(f"{PREFIX}/{path}", here or ".")

    return OUTSIDE.sub(swap, markdown)


# reST roles in docstrings (``:func:`x```, ``:mod:`~a.b```, ``:math:`\hat m```) reach the page as the role's name
# followed by a code span: keep the code span (for ``~a.b``, its last part, as Sphinx shows it).
ROLE = re.compile(r":(?:math|func|mod|class|meth|attr|data|obj|exc):(<code>)(?:~(?:[\w.]+\.)?)?")


def on_page_content(html: str, page, config, files) -> str:
    return ROLE.sub(r"\1", html)
