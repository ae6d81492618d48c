"""Text that may hold secrets or be huge, made fit for a popup, a status item or a log line.

In: any string a user, a settings file, a server or a library put together (a URL with a password, an API key
that leaked into an exception such as httpx's "Illegal header value b'Bearer ...'", a 100k-character setting).
Out: the same text with credentials replaced by ``***`` (URL passwords, ``Bearer``/``Basic`` tokens, ``api_key=``
style pairs), control characters (CR, LF, ESC ...) shown as ``\\r``-style escapes so one message stays one line, and
at most ``limit`` characters (the cut says how much was left out). ``public_url`` gives a URL without its
user:password, for showing where prompts go.
"""

from __future__ import annotations

import re
import urllib.parse

LIMIT = 300  # characters of one message; a status item or a popup shows far fewer

_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^/@\s:]*):(?P<password>[^/@\s]*)@")
_AUTH = re.compile(r"(?i)\b(bearer|basic)(\s+)(?P<secret>[^\s'\"]+)")
_PAIRS = re.compile(
    r"(?i)\b(api[_-]?key|apikey|password|passwd|secret|token|access[_-]?token)(['\"]?\s*[:=]\s*['\"]?)(?P<secret>[^\s'\",}]+)"
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]")


def secrets_out(text: str) -> str:
    """``text`` with URL passwords, Authorization tokens and ``key=value`` secrets replaced by ``***``."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    text = _AUTH.sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)
    return _PAIRS.sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)


def one_line(text: str) -> str:
    """Control characters as escapes: a message with CR/LF in it stays one line (no forged log lines)."""
    return _CONTROL.sub(lambda m: repr(m.group(0))[1:-1], text)


def cap(text: str, limit: int = LIMIT) -> str:
    if len(text) <= limit:
        return text
    return f"{text[: max(0, limit - 40)]}... ({len(text) - max(0, limit - 40)} more characters)"


def message(text: str, limit: int = LIMIT) -> str:
    """What a popup, a status or a log line may show of ``text``: secrets out, one line, at most ``limit``."""
    # one line first: a secret with a line break in it is then one word, replaced whole
    return cap(secrets_out(one_line(text)), limit)


def public_url(url: str) -> str:
    """``url`` without user:password, query or fragment (what status messages and logs may show)."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:  # "http://[::1" or a port out of range: show its scheme only
        return cap(one_line(url.split("://", 1)[0] + "://?"), 80)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{port}" if port else "")
    return cap(one_line(urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))), 200)
