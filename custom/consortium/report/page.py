"""The report's markup: a section as Markdown and HTML, tables in both, and the self-contained HTML page."""

from __future__ import annotations

import base64
import html

Section = tuple[str, str, str]  # (title, markdown body, html body)


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _section(title: str, text: str, header: list[str] | None = None, rows=None) -> Section:
    """(title, markdown body, html body): a paragraph of `text` (if any), then the table (if `header`)."""
    md = [text] if text else []
    body = f"<p>{html.escape(text)}</p>" if text else ""
    if header is not None:
        md.append(_md_table(header, rows))
        body += _html_table(header, rows)
    return title, "\n\n".join(md), body


def html_page(title: str, body: list[str], max_width: int = 960) -> str:
    """A self-contained HTML page (plain tables, embedded images) around `body`."""
    style = (
        f"body{{font-family:sans-serif;max-width:{max_width}px;margin:2em auto;color:#222}}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
        "th{background:#f3f3f3}img{max-width:100%}"
    )
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>"
    )


def render(title: str, sections: list[Section], plots: dict) -> tuple[str, str]:
    """(markdown, html) of the whole report; `plots` maps a section title to its PNG (or None): the Markdown
    links the PNG next to it, the HTML embeds it."""
    md = [f"# {title}", ""]
    body = [f"<h1>{html.escape(title)}</h1>"]
    for name, md_text, html_text in sections:
        md += [f"## {name}", "", md_text, ""]
        body += [f"<h2>{html.escape(name)}</h2>", html_text]
        png = plots.get(name)
        if png is not None:
            md += [f"![{name}]({png.name})", ""]
            data = base64.b64encode(png.read_bytes()).decode()
            body.append(f'<img alt="{html.escape(name)}" src="data:image/png;base64,{data}">')
    return "\n".join(md), html_page(title, body)
