"""Typed settings, parsed once where they enter the server.

In: a JSON object from ``initializationOptions`` or ``workspace/didChangeConfiguration`` (camelCase keys,
optionally nested under ``"codellama"``). Out: a ``Settings`` value plus a list of human-readable
problems. A bad value never stops the server: it is reported (the server shows the problems with
``window/showMessage``) and that one setting keeps its default. Unknown keys are reported too, since a
typo would otherwise silently do nothing.

Wire names: ``model, contextTokens, maxTokens, temperature, timeBudgetMs, fimOrder, prefixRatio,
maxItems, enable, rules, extraContextTokens, exclude, coldJumpMs`` (``enable`` maps a language id, or ``"*"`` for all, to
true/false; ``rules`` maps post-processing rule names to true/false, see ``postprocess``; ``exclude`` lists glob
patterns, on top of ``DEFAULT_EXCLUDE``, of files that never enter a prompt and never get completions); for remote
engines ``engine, url, apiKeyEnv, requestTimeoutMs, tlsVerify, remoteModel`` (the API key itself is never a setting:
only the name of the environment variable that holds it, so it never lands in settings files, logs or status).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any, cast

import attrs
import cattrs
from cattrs.gen import make_dict_unstructure_fn, override

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
    if value and not value.startswith(("http://", "https://")):
        raise ValueError(f"expected url to start with http:// or https://, got {value!r}")


ENGINES = tuple(KINDS)  # engines/registry.py lists every kind


def _range(lo: float, hi: float) -> Validator:
    def check(_inst: Any, attribute: attrs.Attribute[Any], value: float) -> None:
        if not lo <= value <= hi:
            raise ValueError(f"expected {_camel(attribute.name)} in [{lo:g}, {hi:g}], got {value!r}")

    return check


@attrs.define(frozen=True)
class Settings:
    model: str = "demo"  # PATH | demo | REPO:FILE (see models.py)
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
    exclude: list[str] = attrs.field(factory=list)
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
        end of the path."""
        path = path.replace("\\", "/")
        name = path.rsplit("/", 1)[-1]
        for pattern in (*DEFAULT_EXCLUDE, *self.exclude):
            if "/" in pattern:
                if fnmatch.fnmatchcase(path, pattern) or fnmatch.fnmatchcase(path, "*/" + pattern.lstrip("/")):
                    return True
            elif fnmatch.fnmatchcase(name, pattern):
                return True
        return False


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
_conv.register_unstructure_hook(FimOrder, lambda v: v.value)
_renames: dict[str, Any] = {f.name: override(rename=_camel(f.name)) for f in attrs.fields(Settings)}
_conv.register_unstructure_hook(Settings, make_dict_unstructure_fn(Settings, _conv, **_renames))


def _str_list(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"expected a list of strings, got {value!r}")
    return list(value)


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
            problems.append(f"unknown setting {key!r} (expected one of {', '.join(sorted(_FIELDS))})")
            continue
        try:
            typed = _conv.structure(
                value, field.type if field.type is not None and not isinstance(field.type, str) else _resolve(field.name)
            )
            if field.validator is not None:
                field.validator(None, field, typed)
        except (ValueError, TypeError, cattrs.BaseValidationError) as exc:
            msg = str(exc) if not isinstance(exc, cattrs.BaseValidationError) else _flatten(exc)
            problems.append(f"setting {key}: {msg}; using the default {getattr(Settings(), field.name)!r}")
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
