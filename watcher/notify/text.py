"""A Message as plain text, as HTML (with tables for batches and digests) and as one console line.

`private=True` adds the message's private links (an export's download URLs): only for
targets private to the team, such as e-mail.
"""

from __future__ import annotations

import html

from watcher.notify.facts import one_line
from watcher.notify.message import Message, Section

#: Items a plain-text or HTML section lists before "and N more" (the event caps them anyway).
MAX_ITEMS = 50


def summary_lines(message: Message, *, private: bool = False) -> list[str]:
    """Facts, errors, sections and links as lines: the body of the plain-text message."""
    lines = [f"{label}: {value}" for label, value in message.facts]
    if errs := message.error_lines():
        lines.append("Errors: " + errs[0])
        lines += [f"  {line}" for line in errs[1:]]
    for section in message.sections:
        lines += ["", f"{section.heading}:"]
        lines += [f"  {line}" for line in section.lines[:MAX_ITEMS]]
        if more := _more(section):
            lines.append(f"  … and {more:,} more")
    for link in message.links_for(private=private):
        note = f" ({link.note})" if link.note else ""
        lines.append(f"{link.label}{note}: {link.url}")
    return lines


def plain_text(message: Message, *, private: bool = False) -> str:
    """Heading, summary, then the summary lines."""
    return "\n".join([message.heading, "", message.summary, "", *summary_lines(message, private=private)]) + "\n"


def html_body(message: Message, *, private: bool = False) -> str:
    """A small self-contained HTML body; every value escaped."""
    esc = html.escape
    rows = "".join(f"<tr><th align='left'>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in message.facts)
    parts = [f"<h2>{esc(message.heading)}</h2>", f"<p>{esc(message.summary)}</p>", f"<table>{rows}</table>"]
    if errs := message.error_lines():
        items = "".join(f"<li>{esc(line)}</li>" for line in errs[1:])
        parts.append(f"<p><b>Errors:</b> {esc(errs[0])}</p>" + (f"<ul>{items}</ul>" if items else ""))
    parts += [_html_section(section) for section in message.sections]
    for link in message.links_for(private=private):
        note = f" ({esc(link.note)})" if link.note else ""
        parts.append(f'<p><a href="{esc(link.url)}">{esc(link.label)}</a>{note}</p>')
    parts.append(f"<p><small>{esc(message.footer)}</small></p>")
    return "<html><body>" + "".join(parts) + "</body></html>\n"


def console_line(message: Message) -> str:
    """One line per event: its symbol and its one-line form."""
    return one_line(f"{message.symbol} {message.line}")


def _html_section(section: Section) -> str:
    esc = html.escape
    out = [f"<h3>{esc(section.heading)}</h3>"]
    if section.rows and section.columns:
        head = "".join(f"<th align='left'>{esc(c)}</th>" for c in section.columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{esc(cell)}</td>" for cell in row) + "</tr>" for row in section.rows[:MAX_ITEMS]
        )
        out.append(f"<table border='1' cellpadding='4' cellspacing='0'><tr>{head}</tr>{body}</table>")
    else:
        out.append("<ul>" + "".join(f"<li>{esc(line)}</li>" for line in section.lines[:MAX_ITEMS]) + "</ul>")
    if more := _more(section):
        out.append(f"<p>… and {more:,} more</p>")
    return "".join(out)


def _more(section: Section) -> int:
    shown = min(len(section.rows or section.lines), MAX_ITEMS)
    return section.more + max(0, len(section.rows or section.lines) - shown)
