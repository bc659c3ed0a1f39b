"""Store URLs without their secrets, for log lines, error messages and status output.

:func:`redact_url` is the one place that decides what of a URL is secret:
the password of its userinfo, and the value of every query parameter whose
name looks like a secret (``password``, ``secret``, ``token``, ``key``...),
including the ``NAME:value`` pairs of a parameter such as
``authMechanismProperties=AWS_SESSION_TOKEN:...``. Each becomes ``***``.
It accepts anything, malformed URLs too (an unescaped ``@`` or ``/`` in the
password, no scheme), since those are the URLs that end up in error messages.

:func:`redact_text` masks the secrets of a URL wherever they appear in a
text, such as a driver's error message.
"""
from __future__ import annotations

import re
from urllib.parse import unquote

MASK = '***'

#: a query parameter (or authMechanismProperties entry) whose value is a secret
_SECRET_NAME = re.compile(r'pass|pwd|secret|token|key|credential|signature|auth_?code', re.IGNORECASE)
#: what may follow the userinfo's '@': a host list, up to the path or query
_HOSTS = re.compile(r'[^@/?#\s]*')


def _split_userinfo(rest: str) -> tuple[str, str] | None:
    """``(userinfo, remainder)`` of the part of a URL after ``scheme://``, or None without userinfo.

    The userinfo ends at the last ``@`` before the query (as pymongo reads
    it), or at the last ``@`` at all when none precedes a ``?`` (a ``?`` in the
    password).
    """
    query_at = rest.find('?')
    head = rest if query_at < 0 else rest[:query_at]
    at = head.rfind('@')
    if at < 0:
        at = rest.rfind('@')
    if at < 0:
        return None
    return rest[:at], rest[at:]


def _is_secret(name: str) -> bool:
    return bool(_SECRET_NAME.search(unquote(name)))


def _redact_value(value: str) -> str:
    """A query value with the values of secret-looking ``NAME:value`` pairs masked (authMechanismProperties)."""
    decoded = unquote(value)
    if ':' not in decoded:
        return value
    pairs = decoded.split(',')
    if not any(_is_secret(pair.partition(':')[0]) for pair in pairs if ':' in pair):
        return value
    return ','.join(f'{pair.partition(":")[0]}:{MASK}' if ':' in pair and _is_secret(pair.partition(':')[0])
                    else pair for pair in pairs)


def _redact_query(query: str) -> str:
    out = []
    for part in re.split(r'([&;])', query):
        if part in ('&', ';') or '=' not in part:
            out.append(part)
            continue
        name, _, value = part.partition('=')
        out.append(f'{name}={MASK}' if value and _is_secret(name) else f'{name}={_redact_value(value)}')
    return ''.join(out)


def redact_url(url: object) -> str:
    """``url`` with its password and secret-looking query values replaced by ``***``.

    ``mongodb://user:pw@host/db?tlsCertificateKeyFilePassword=x`` becomes
    ``mongodb://user:***@host/db?tlsCertificateKeyFilePassword=***``. A URL
    without secrets comes back unchanged.
    """
    url = str(url)
    scheme, sep, rest = url.partition('://')
    if not sep:
        scheme, rest = '', url
    split = _split_userinfo(rest)
    if split is not None:
        userinfo, rest = split
        user, colon, password = userinfo.partition(':')
        if colon and password:
            userinfo = f'{user}:{MASK}'
        rest = userinfo + rest
    base, qmark, query = rest.partition('?')
    if qmark:
        fragment = ''
        if '#' in query:
            query, _, fragment = query.partition('#')
            fragment = '#' + fragment
        rest = f'{base}?{_redact_query(query)}{fragment}'
    return f'{scheme}{sep}{rest}'


def _secrets(url: str) -> list[str]:
    """The secret strings of ``url`` (as written and percent-decoded), longest first."""
    found: list[str] = []
    _, sep, rest = url.partition('://')
    split = _split_userinfo(rest if sep else url)
    if split is not None:
        found.append(split[0].partition(':')[2])
    query = url.partition('?')[2].partition('#')[0]
    for part in re.split(r'[&;]', query):
        name, _, value = part.partition('=')
        if _is_secret(name):
            found.append(value)
        else:
            for pair in unquote(value).split(','):
                pair_name, colon, pair_value = pair.partition(':')
                if colon and _is_secret(pair_name):
                    found.append(pair_value)
    secrets = {s for secret in found for s in (secret, unquote(secret), unquote(secret.replace('+', ' ')))
               if len(s) >= 4 and s != MASK}  # shorter ones would mangle the text
    return sorted(secrets, key=len, reverse=True)


def redact_text(text: object, url: object) -> str:
    """``text`` with ``url`` shown redacted and every secret of ``url`` in it replaced by ``***``."""
    text, url = str(text), str(url)
    text = text.replace(url, redact_url(url))
    for secret in _secrets(url):
        text = text.replace(secret, MASK)
    return text
