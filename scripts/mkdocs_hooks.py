"""mkdocs hook: links from a page to a repository file outside ``docs/`` (``../results/...``).

mkdocs only knows the files under ``docs/``, so such a link would be reported as missing (and fail ``--strict``) or
be left dangling in the site. This hook checks that the target exists in the repository (a broken one is a warning,
so ``--strict`` fails) and rewrites the link to the file on ``repo_url`` when one is configured, else to its path.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

log = logging.getLogger("mkdocs.hooks.repo_links")
LINK = re.compile(r"(?<!!)\[([^\]]+)\]\(([^)\s#]+)(#[^)\s]*)?\)")


def _rewrite(match: re.Match[str], page_dir: Path, docs: Path, root: Path, repo_url: str | None, src: str) -> str:
    """One link: unchanged when it points into ``docs/`` or off the repository, else rewritten (or reported)."""
    text, target = match.group(1), match.group(2)
    if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("/"):
        return match.group(0)
    path = (page_dir / target).resolve()
    if path.is_relative_to(docs) or not path.is_relative_to(root):
        return match.group(0)
    rel = path.relative_to(root).as_posix()
    if not path.exists():
        log.warning("%s: link to %s, which is not in the repository", src, rel)
        return match.group(0)
    if repo_url:
        return f"[{text}]({repo_url.rstrip('/')}/{'tree' if path.is_dir() else 'blob'}/HEAD/{rel})"
    return f"`{rel}`" if text.strip("`") == path.name else f"{text} (`{rel}`)"


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Rewrite the page's links to repository files outside ``docs/``."""
    docs = Path(config["docs_dir"]).resolve()
    root = Path(config["config_file_path"]).resolve().parent
    page_dir = Path(page.file.abs_src_path).resolve().parent
    src = page.file.src_uri
    return LINK.sub(lambda m: _rewrite(m, page_dir, docs, root, config.get("repo_url"), src), markdown)
