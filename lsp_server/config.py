"""Typed settings, parsed once where they enter the server.

In: a JSON object from ``initializationOptions`` or ``workspace/didChangeConfiguration`` (camelCase keys,
optionally nested under ``"codellama"``). Out: a ``Settings`` value plus a list of human-readable
problems. A bad value never stops the server: it is reported (the server shows the problems with
``window/showMessage``) and that one setting keeps its default. Unknown keys are reported too, since a
typo would otherwise silently do nothing.

Wire names: ``model, contextTokens, maxTokens, temperature, timeBudgetMs, fimOrder, prefixRatio,
maxItems, enable, rules, extraContextTokens, exclude, completionItems, coldJumpMs`` (``enable`` maps a language id, or ``"*"`` for all, to
true/false; ``rules`` maps post-processing rule names to true/false, see ``postprocess``; ``exclude`` lists glob
patterns, on top of ``DEFAULT_EXCLUDE``, of files that never enter a prompt and never get completions;
``completionItems: false`` keeps ``completionProvider`` out of the capabilities, read at ``initialize``); for remote
engines ``engine, url, apiKeyEnv, requestTimeoutMs, tlsVerify, remoteModel`` (the API key itself is never a setting:
only the name of the environment variable that holds it, so it never lands in settings files, logs or status).

Trust (``Trust``, ``guard``): the client's settings may come from a cloned repository's workspace settings, so they
may not choose where prompts go or which secret travels with them. A client's ``url`` is taken only when its host
(scheme, host, port) is one the command line named (``--url``, ``--allow-host``); its ``apiKeyEnv`` only when it
names ``CODELLAMA_API_KEY`` or the command line's ``--api-key-env``; ``tlsVerify: false`` only from the command
line. ``--allow-remote-settings`` lifts all three (docs/deployment.md explains the choice).

Exclusions (``Settings.excluded``) match files, not spellings: case-insensitively (macOS and Windows file names),
on the path as given and on its resolved target (a symlink to ``.env`` under another name), with trailing slashes
ignored; URIs (``file:``) are read as their paths. The patterns are compiled once per list.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import re
import urllib.parse
from collections.abc import Callable
from typing import Any, cast

import attrs
import cattrs
from cattrs.gen import make_dict_unstructure_fn, override

from codellama_core import redact

from .engines.registry import KINDS
from .fim import FimOrder
from .postprocess import RULES


def _known_rules(rules: dict[str, bool]) -> None:
    unknown = sorted(set(rules) - RULES)
    if unknown:
        raise ValueError(f"expected rules among {', '.join(sorted(RULES))}, got {', '.join(map(repr, unknown))}")


DEFAULT_EXCLUDE = (".env", ".env.*", "*.pem", "*.key", "id_rsa*", "id_ed25519*", "secrets.*", "*.p12", "*.pfx")


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]


def _one_of(*values: str) -> Validator:
    def check(_inst: Any, attribute: attrs.Attribute[Any], value: str) -> None:
        if value not in values:
            raise ValueError(f"expected {_camel(attribute.name)} one of {', '.join(map(repr, values))}, got {value!r}")

    return check


def _url(_inst: Any, _attribute: attrs.Attribute[Any], value: str) -> None:
    if not value:
        return
    shown = redact.public_url(value)
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"expected url to start with http:// or https://, got {redact.message(value, 120)!r}")
    try:
        parts = urllib.parse.urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port out of 0..65535
    except ValueError as exc:
        raise ValueError(f"expected url to be a valid http(s) URL, got {shown!r} ({exc})") from None
    if not parts.hostname:
        raise ValueError(f"expected url to name a host, got {shown!r}")
    if parts.port == 0:
        raise ValueError(f"expected url's port in 1..65535, got {shown!r}")


def _model(_inst: Any, _attribute: attrs.Attribute[Any], value: str) -> None:
    # a path, "demo" or REPO:FILE: never longer than a path may be, never with control characters
    if not value or len(value) > MAX_MODEL_CHARS or redact.one_line(value) != value:
        raise ValueError(f"expected model to be a path, 'demo' or REPO:FILE (at most {MAX_MODEL_CHARS} characters "
                         f"on one line), got {redact.message(value, 80)!r}")  # fmt: skip


def _patterns(_inst: Any, _attribute: attrs.Attribute[Any], value: list[str]) -> None:
    if len(value) > MAX_EXCLUDE:
        raise ValueError(f"expected at most {MAX_EXCLUDE} exclude patterns, got {len(value)}")
    long = [p for p in value if len(p) > 1000]
    if long:
        raise ValueError(f"expected exclude patterns of at most 1000 characters, got one of {len(long[0])}")


MAX_MODEL_CHARS = 4096  # PATH_MAX on Linux
MAX_EXCLUDE = 1000  # patterns; compiled into one expression, but 100,000 would still cost seconds to compile


ENGINES = tuple(KINDS)  # engines/registry.py lists every kind


def _range(lo: float, hi: float) -> Validator:
    def check(_inst: Any, attribute: attrs.Attribute[Any], value: float) -> None:
        if not lo <= value <= hi:
            raise ValueError(f"expected {_camel(attribute.name)} in [{lo:g}, {hi:g}], got {value!r}")

    return check


@attrs.define(frozen=True)
class Settings:
    model: str = attrs.field(default="demo", validator=_model)  # PATH | demo | REPO:FILE (see models.py)
    context_tokens: int = attrs.field(default=2048, validator=_range(16, 131072))  # prefix + suffix budget
    max_tokens: int = attrs.field(default=64, validator=_range(1, 2048))
    temperature: float = attrs.field(default=0.0, validator=_range(0.0, 2.0))
    time_budget_ms: int = attrs.field(default=2000, validator=_range(10, 600000))
    fim_order: FimOrder = FimOrder.SPM
    prefix_ratio: float = attrs.field(default=0.75, validator=_range(0.0, 1.0))
    max_items: int = attrs.field(default=3, validator=_range(1, 10))
    enable: dict[str, bool] = attrs.field(factory=lambda: {"*": True})
    # tokens of chunks from other open files and recently edited regions, before the FIM part (0: off)
    extra_context_tokens: int = attrs.field(default=512, validator=_range(0, 131072))
    # latency target of a jump to a place nothing evaluated yet: contextTokens/extraContextTokens left at their
    # defaults are sized from the engine's measured speed to fit it (pacing.PromptSizer; never above the defaults);
    # 0: the sizes as they are
    cold_jump_ms: int = attrs.field(default=1500, validator=_range(0, 600000))
    # privacy: files whose name (or path) matches one of these or of DEFAULT_EXCLUDE never reach a prompt
    exclude: list[str] = attrs.field(factory=list, validator=_patterns)
    # where the model runs: in this process (llama.cpp), or on a server; for a server, ``model`` names the GGUF
    # whose vocabulary we tokenize with (the server's model file, or any GGUF with the same vocabulary)
    engine: str = attrs.field(default="llama.cpp", validator=_one_of(*ENGINES))
    url: str = attrs.field(default="", validator=_url)  # the server's base URL (no /v1)
    api_key_env: str = "CODELLAMA_API_KEY"  # the environment variable holding the server's API key
    request_timeout_ms: int = attrs.field(default=10000, validator=_range(100, 600000))  # connect / first byte
    tls_verify: bool = True  # https: verify the server's certificate (SSL_CERT_FILE names a private CA)
    remote_model: str = ""  # OpenAI-compatible servers: the model name ("" = the server's first model)
    # post-processing rules by name (postprocess.RULES), all on unless switched off here
    rules: dict[str, bool] = attrs.field(factory=dict, validator=lambda _i, _a, v: _known_rules(v))
    # whether ``initialize`` advertises ``completionProvider``, so completion menus (nvim-cmp, VS Code's
    # suggest list) ask for our items too; read at ``initialize`` only. The request is answered either way.
    completion_items: bool = True

    @property
    def rule_set(self) -> frozenset[str]:
        return frozenset(r for r in RULES if self.rules.get(r, True))

    def enabled_for(self, language_id: str | None) -> bool:
        if language_id and language_id in self.enable:
            return self.enable[language_id]
        return self.enable.get("*", True)

    def excluded(self, path: str) -> bool:
        """Whether the file at ``path`` (a file system path or a URI) matches a pattern of ``DEFAULT_EXCLUDE``
        or ``exclude``: a pattern without "/" is matched against the file name, one with "/" against the
        end of the path; case-insensitively, on the path as given and on the file it resolves to."""
        names, paths = _matchers((*DEFAULT_EXCLUDE, *self.exclude))
        for p in _spellings(path):
            if (names is not None and names.match(p.rsplit("/", 1)[-1])) or (paths is not None and paths.match(p)):
                return True
        return False


def _spellings(path: str) -> list[str]:
    """``path`` (or a URI's path) with "/" separators and no trailing "/", and its resolved target if it differs."""
    if "://" in path[:12] or path.startswith("file:"):
        parts = urllib.parse.urlsplit(path)
        path = urllib.parse.unquote(parts.path if parts.scheme == "file" else parts.path or parts.netloc)
    path = path.replace("\\", "/")
    stripped = path.rstrip("/") or path
    out = [stripped]
    if os.path.isabs(stripped):
        try:
            real = os.path.realpath(stripped).replace("\\", "/")
        except (OSError, ValueError):  # a NUL in the name, a loop of links: the spelling alone is matched
            real = stripped
        if real != stripped:
            out.append(real)
    return out


@functools.lru_cache(maxsize=16)
def _matchers(patterns: tuple[str, ...]) -> tuple[re.Pattern[str] | None, re.Pattern[str] | None]:
    """One expression for the name patterns and one for the path patterns (``exclude`` changes rarely, while every
    request tests every open file: one match per file, not one per pattern)."""
    names = [fnmatch.translate(p) for p in patterns if "/" not in p]
    paths: list[str] = []
    for p in patterns:
        if "/" in p:
            paths += [fnmatch.translate(p), fnmatch.translate("*/" + p.lstrip("/"))]

    def one(parts: list[str]) -> re.Pattern[str] | None:
        return re.compile("|".join(f"(?:{x})" for x in parts), re.IGNORECASE | re.DOTALL) if parts else None

    return one(names), one(paths)


_FIELDS = {_camel(f.name): f for f in attrs.fields(Settings)}

_conv = cattrs.Converter()


def _strict(kind: type, label: str) -> Callable[[Any, type], Any]:
    def hook(value: Any, _t: type) -> Any:
        # bool is an int in Python; a JSON true for a number is a mistake worth reporting.
        if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                return float(value)
            raise ValueError(f"expected {label}, got {value!r}")
        return value

    return hook


_conv.register_structure_hook(int, _strict(int, "an integer"))
_conv.register_structure_hook(float, _strict(float, "a number"))
_conv.register_structure_hook(bool, _strict(bool, "true or false"))
_conv.register_structure_hook(str, _strict(str, "a string"))
_conv.register_structure_hook(FimOrder, lambda v, _t: _fim_order(v))
_conv.register_structure_hook_func(lambda t: t == list[str], lambda v, _t: _str_list(v))
_conv.register_structure_hook_func(lambda t: t == dict[str, bool], lambda v, _t: _bool_map(v))
_conv.register_unstructure_hook(FimOrder, lambda v: v.value)
_renames: dict[str, Any] = {f.name: override(rename=_camel(f.name)) for f in attrs.fields(Settings)}
_conv.register_unstructure_hook(Settings, make_dict_unstructure_fn(Settings, _conv, **_renames))


def _str_list(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"expected a list of strings, got {value!r}")
    return list(value)


def _bool_map(value: Any) -> dict[str, bool]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, bool) for k, v in value.items()):
        raise ValueError(f"expected an object of true/false values, got {redact.message(repr(value), 120)}")
    return dict(value)


def _fim_order(value: Any) -> FimOrder:
    try:
        return FimOrder(str(value).lower())
    except ValueError:
        raise ValueError(f"expected fimOrder 'spm' or 'psm', got {value!r}") from None


def parse(raw: Any, base: Settings | None = None) -> tuple[Settings, list[str]]:
    """Settings from a JSON object, starting from ``base`` (defaults when None), and the problems found."""
    settings = base or Settings()
    problems: list[str] = []
    if raw is None:
        return settings, problems
    if isinstance(raw, dict) and isinstance(raw.get("codellama"), dict):
        raw = raw["codellama"]
    if not isinstance(raw, dict):
        return settings, [f"expected the settings to be a JSON object, got {type(raw).__name__}"]
    changes: dict[str, Any] = {}
    for key, value in raw.items():
        field = _FIELDS.get(key)
        if field is None:
            problems.append(f"unknown setting {redact.message(repr(key), 80)} (expected one of {', '.join(sorted(_FIELDS))})")
            continue
        try:
            typed = _conv.structure(
                value, field.type if field.type is not None and not isinstance(field.type, str) else _resolve(field.name)
            )
            if field.validator is not None:
                field.validator(None, field, typed)
        except (ValueError, TypeError, AttributeError, KeyError, cattrs.BaseValidationError) as exc:
            msg = str(exc) if not isinstance(exc, cattrs.BaseValidationError) else _flatten(exc)
            problems.append(redact.message(f"setting {key}: {msg}; using the default {getattr(Settings(), field.name)!r}"))
            changes[field.name] = getattr(Settings(), field.name)
            continue
        changes[field.name] = typed
    return attrs.evolve(settings, **changes), problems


def _resolve(name: str) -> Any:
    """A field's type when ``from __future__ import annotations`` left it a string."""
    attrs.resolve_types(Settings)
    return {f.name: f.type for f in attrs.fields(Settings)}[name]


def _flatten(exc: cattrs.BaseValidationError) -> str:
    parts = []
    for sub in exc.exceptions:
        parts.append(_flatten(sub) if isinstance(sub, cattrs.BaseValidationError) else str(sub))
    return "; ".join(parts) or str(exc)


def to_wire(settings: Settings) -> dict[str, Any]:
    """The settings as camelCase JSON (the server logs them at initialize and what changes after)."""
    return cast(dict[str, Any], _conv.unstructure(settings))


def for_log(wire: dict[str, Any]) -> dict[str, Any]:
    """Wire settings fit for a log line: the url without its password, long values cut."""
    out: dict[str, Any] = {}
    for k, v in wire.items():
        if k == "url" and isinstance(v, str):
            v = redact.public_url(v) if v else v
        elif isinstance(v, str):
            v = redact.message(v, 200)
        elif isinstance(v, list) and len(v) > 20:
            v = [*v[:20], f"... {len(v) - 20} more"]
        out[k] = v
    return out


# ---- trust: what a client's settings may choose ----------------------------------------------------------------
DEFAULT_KEY_ENV = "CODELLAMA_API_KEY"


@attrs.define(frozen=True)
class Trust:
    """What the command line (the user, not a workspace) allows the client's settings to choose."""

    hosts: tuple[str, ...] = ()  # origins (scheme://host:port) prompts may go to: --url and --allow-host
    key_env: str = DEFAULT_KEY_ENV  # the variable the API key comes from: --api-key-env or CODELLAMA_API_KEY
    open: bool = False  # --allow-remote-settings: the client's settings may choose all of it
    insecure_tls: bool = False  # --no-tls-verify: a client's tlsVerify false changes nothing then

    @classmethod
    def from_command_line(cls, cli: dict[str, Any], allow_hosts: tuple[str, ...] = (), open_: bool = False) -> Trust:
        hosts = [o for o in (origin(str(cli.get("url") or "")), *map(host_origin, allow_hosts)) if o]
        key_env = str(cli.get("apiKeyEnv") or DEFAULT_KEY_ENV)
        return cls(tuple(hosts), key_env, open_, cli.get("tlsVerify") is False)


def origin(url: str) -> str | None:
    """``scheme://host:port`` of an http(s) URL (the port made explicit), None for anything else."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme.lower())
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname or port is None:
        return None
    return f"{parts.scheme.lower()}://{parts.hostname.lower()}:{port}"


def host_origin(value: str) -> str | None:
    """``--allow-host``: a URL, or HOST[:PORT] (http and https; without a port, the scheme's default)."""
    return origin(value) if "://" in value else f"*://{value.strip().lower()}"


def _host_allowed(url: str, hosts: tuple[str, ...]) -> bool:
    got = origin(url)
    if got is None:
        return True  # not a URL at all: the validator reports it and keeps the default
    rest = got.split("://", 1)[1]
    host, port = rest.rsplit(":", 1)
    for h in hosts:
        if h == got:
            return True
        if h.startswith("*://"):  # --allow-host HOST[:PORT]
            want = h[4:]
            if want == host or want == f"{host}:{port}" or want == f"[{host}]:{port}" or want == f"[{host}]":
                return True
    return False


def guard(raw: Any, trust: Trust) -> tuple[Any, list[str]]:
    """A client's raw settings without what ``trust`` does not let a client choose, and why each was refused."""
    if isinstance(raw, dict) and isinstance(raw.get("codellama"), dict):
        raw = raw["codellama"]
    if not isinstance(raw, dict) or trust.open:
        return raw, []
    out = dict(raw)
    problems: list[str] = []
    hint = "(start the server with --allow-remote-settings to let settings choose it)"
    url = out.get("url")
    if isinstance(url, str) and url and not _host_allowed(url, trust.hosts):
        del out["url"]
        problems.append(
            f"setting url: prompts go only to servers named on the command line (--url, --allow-host), "
            f"got {redact.public_url(url)!r}; not used {hint}"
        )
    key_env = out.get("apiKeyEnv")
    if isinstance(key_env, str) and key_env != trust.key_env:
        del out["apiKeyEnv"]
        if key_env != DEFAULT_KEY_ENV:  # the default name from an editor that always sends it: nothing to say
            problems.append(
                f"setting apiKeyEnv: the API key comes from ${trust.key_env} (or --api-key-env), "
                f"got {redact.message(key_env, 60)!r}; not used {hint}"
            )
    if out.get("tlsVerify") is False and not trust.insecure_tls:
        del out["tlsVerify"]
        problems.append(f"setting tlsVerify: certificate checks are turned off only by --no-tls-verify; not used {hint}")
    return out, problems
