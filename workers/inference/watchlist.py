"""The watchlist: brands and keywords with their aliases, @handles and #hashtags, found in post text.

Pure: a ``Watchlist`` is built once from a YAML file (or a dict) and ``find`` is a function of the
text. All surface forms are compiled into one regular expression, longest first, so a post is scanned
once whatever the size of the list, and the longest form wins where forms overlap ("Acme Cloud"
before "Acme").
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from schemas import WatchMatch

Kind = Literal["brand", "keyword"]

# Word boundaries that know about social text: a plain alias is not part of a longer word, a
# handle or a hashtag ("acme" does not match in "@acme" or "#acme"; those are their own forms).
_PLAIN_BEFORE = r"(?<![\w@#])"
_TAG_BEFORE = r"(?<![\w@#&])"
# "@acme." ends a sentence; "@acme.bsky.social" is another handle.
_AFTER = r"(?![\w]|[.\-]\w)"
_PLAIN_AFTER = r"(?!\w)"


class WatchlistError(ValueError):
    """A watchlist file that cannot be used; the message names the entry and the problem."""


@dataclass(frozen=True)
class Watched:
    """One brand or keyword and every surface form that counts as a mention of it."""

    term: str
    kind: Kind
    aliases: tuple[str, ...] = ()
    handles: tuple[str, ...] = ()
    hashtags: tuple[str, ...] = ()
    case_sensitive: bool = False


def _tag_of(alias: str) -> str:
    # "Acme Cloud" -> "acmecloud": how people hashtag a multi-word name.
    return "".join(ch for ch in alias if ch.isalnum() or ch == "_").casefold()


@dataclass(frozen=True)
class _Form:
    prefix: str  # "", "@" or "#"
    text: str
    case_sensitive: bool
    entry: Watched

    def key(self) -> tuple[str, str]:
        body = " ".join(self.text.split())
        return (self.prefix, body if self.case_sensitive else body.casefold())

    def atoms(self) -> list[str]:
        """The form as regex atoms: one per character (lower-cased unless case-sensitive), any
        run of whitespace as ``\\s+``; the leading boundary is the branch's, see ``_render``."""
        text = self.prefix + " ".join(self.text.split())
        if not self.case_sensitive:
            text = text.lower()
        return [r"\s+" if ch == " " else re.escape(ch) for ch in text]

    def end(self) -> str:
        return _AFTER if self.prefix else _PLAIN_AFTER


_END = ""  # trie key of "a form ends here" (atoms are never empty)


def _trie(forms: Iterable[_Form]) -> dict[str, Any]:
    root: dict[str, Any] = {}
    for form in forms:
        node = root
        for atom in form.atoms():
            node = node.setdefault(atom, {})
        node[_END] = form
    return root


def _render(node: dict[str, Any], groups: list[Watched]) -> str:
    """A trie as a regex: at each character only the forms that continue there are tried, longer
    continuations before the form that ends here (longest wins), and an empty group at each end
    says which form matched (``Match.lastindex``)."""
    alternatives = [atom + _render(child, groups) for atom, child in node.items() if atom != _END]
    if _END in node:
        form: _Form = node[_END]
        groups.append(form.entry)
        alternatives.append(form.end() + "()")
    return alternatives[0] if len(alternatives) == 1 else "(?:" + "|".join(alternatives) + ")"


class Watchlist:
    """Brands and keywords to look for; ``find(text)`` returns every mention with its offsets."""

    def __init__(self, entries: Iterable[Watched]) -> None:
        self.entries: tuple[Watched, ...] = tuple(entries)
        exact: dict[tuple[str, str], Watched] = {}
        folded: dict[tuple[str, str], Watched] = {}
        forms: list[_Form] = []
        for entry in self.entries:
            for form in _forms(entry):
                table = exact if form.case_sensitive else folded
                other = table.get(form.key())
                if other is not None and other != entry:
                    raise WatchlistError(
                        f"'{form.prefix}{form.text}' is a form of both '{other.term}' ({other.kind}) "
                        f"and '{entry.term}' ({entry.kind})"
                    )
                if other is None:
                    table[form.key()] = entry
                    forms.append(form)
        # One pass over the text whatever the size of the list: the forms become character tries.
        # Case-sensitive aliases are tried before the others at the same position.
        self._entries_by_group: list[Watched] = []
        plain: list[str] = []
        exact_forms = [f for f in forms if not f.prefix and f.case_sensitive]
        folded_forms = [f for f in forms if not f.prefix and not f.case_sensitive]
        tagged_forms = [f for f in forms if f.prefix]
        if exact_forms:
            plain.append(_render(_trie(exact_forms), self._entries_by_group))
        if folded_forms:
            plain.append("(?i:" + _render(_trie(folded_forms), self._entries_by_group) + ")")
        branches = []
        if plain:
            branches.append(_PLAIN_BEFORE + "(?:" + "|".join(plain) + ")")
        if tagged_forms:
            branches.append(_TAG_BEFORE + "(?i:" + _render(_trie(tagged_forms), self._entries_by_group) + ")")
        self._regex = re.compile("|".join(branches)) if branches else None

    def __len__(self) -> int:
        return len(self.entries)

    def find(self, text: str) -> tuple[WatchMatch, ...]:
        """Every mention of a watched term in ``text``, left to right, non-overlapping."""
        if self._regex is None:
            return ()
        found = []
        for m in self._regex.finditer(text):
            entry = self._entries_by_group[(m.lastindex or 1) - 1]
            found.append(
                WatchMatch(term=entry.term, kind=entry.kind, text=m.group(), start=m.start(), end=m.end())
            )
        return tuple(found)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any] | None) -> Watchlist:
        """Build from the parsed YAML document: ``brands:`` and ``keywords:`` lists of entries."""
        if doc is None:
            return cls(())
        if not isinstance(doc, Mapping):
            raise WatchlistError("a watchlist is a mapping with 'brands' and/or 'keywords' lists")
        unknown = set(doc) - {"brands", "keywords"}
        if unknown:
            raise WatchlistError(f"unknown top-level key(s): {', '.join(sorted(unknown))}")
        entries: list[Watched] = []
        for section, kind in (("brands", "brand"), ("keywords", "keyword")):
            items = doc.get(section) or []
            if not isinstance(items, list):
                raise WatchlistError(f"'{section}' must be a list")
            for i, item in enumerate(items):
                entries.append(_entry(item, kind, f"{section}[{i}]"))  # type: ignore[arg-type]
        return cls(entries)

    @classmethod
    def load(cls, path: Path) -> Watchlist:
        """Read a watchlist YAML file; a missing file is an error (say so rather than match nothing)."""
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise WatchlistError(f"cannot read watchlist {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise WatchlistError(f"watchlist {path} is not valid YAML: {exc}") from None
        try:
            return cls.from_dict(doc)
        except WatchlistError as exc:
            raise WatchlistError(f"watchlist {path}: {exc}") from None


_ENTRY_KEYS = {"term", "aliases", "handles", "hashtags", "case_sensitive"}


def _strings(item: Mapping[str, Any], key: str, where: str, strip: str = "") -> tuple[str, ...]:
    value = item.get(key) or []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip(strip + " ") for v in value):
        raise WatchlistError(f"{where}.{key} must be a list of non-empty strings")
    return tuple(v.strip().lstrip(strip) for v in value)


def _entry(item: Any, kind: Kind, where: str) -> Watched:
    if isinstance(item, str):
        item = {"term": item}
    if not isinstance(item, Mapping):
        raise WatchlistError(f"{where} must be a name or a mapping with 'term'")
    unknown = set(item) - _ENTRY_KEYS
    if unknown:
        raise WatchlistError(f"{where} has unknown key(s): {', '.join(sorted(unknown))}")
    term = item.get("term")
    if not isinstance(term, str) or not term.strip():
        raise WatchlistError(f"{where}.term must be a non-empty string")
    handles = _strings(item, "handles", where, "@")
    hashtags = _strings(item, "hashtags", where, "#")
    for value in handles + hashtags:
        if any(ch.isspace() for ch in value):
            raise WatchlistError(f"{where}: handle or hashtag '{value}' contains whitespace")
    return Watched(
        term=term.strip(),
        kind=kind,
        aliases=_strings(item, "aliases", where),
        handles=handles,
        hashtags=hashtags,
        case_sensitive=bool(item.get("case_sensitive", False)),
    )


def _forms(entry: Watched) -> list[_Form]:
    names = (entry.term, *entry.aliases)
    forms = [_Form("", name, entry.case_sensitive, entry) for name in names]
    forms += [_Form("@", h, False, entry) for h in entry.handles]
    # Every name also counts as a hashtag (#acme, #acmecloud), plus the explicit ones.
    tags = {_tag_of(name) for name in names} | {h.casefold() for h in entry.hashtags}
    forms += [_Form("#", t, False, entry) for t in sorted(tags) if t]
    return forms
