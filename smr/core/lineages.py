"""The lineage spec: which classes a data set has and how they are ordered along maturation.

A spec names one or more *lineages* (classes ordered immature -> mature, at least two each) and a
set of *other* classes that have no maturity order. Its class order, ``LineageSpec.classes`` (the
lineage classes in order, then the other classes), is the class order of the whole system: label
indices, SVM columns and the served ``PROBABILITIES`` tensor all follow it.

On disk a spec is a ``lineages.toml`` beside the class folders::

    [[lineage]]
    name = "granulopoiesis"
    classes = ["promyelocyte", "myelocyte", "metamyelocyte", "band", "segmented"]

    [other]
    classes = ["basophil", "eosinophil", "lymphocyte", "monocyte"]

    [ignore]                  # optional: class folders of the data set that SMR leaves out
    folders = ["artefact"]

    [imaging]                 # optional: the physical size of the images' pixels
    microns_per_pixel = 0.1

``microns_per_pixel`` is the scale the model learns cells at; ``smr train`` records it with the
images' size and serving rescales slides to it. A spec without it has an unknown scale.

This module uses numpy and the standard library only (it is copied next to the Triton models).
``tomllib`` is imported where a file is read, so the module itself imports on Python 3.10 too.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "SpecError",
    "Lineage",
    "LineageSpec",
    "load_spec",
    "parse_spec",
    "check_microns_per_pixel",
    "MPP_RANGE",
    "PAPER_SPEC",
]

_TOP_KEYS = ("lineage", "other", "ignore", "imaging")
_LINEAGE_KEYS = ("name", "classes")
_OTHER_KEYS = ("classes",)
_IGNORE_KEYS = ("folders",)
_IMAGING_KEYS = ("microns_per_pixel",)
_DICT_KEYS = ("lineages", "other", "ignore", "imaging")
#: Plausible microns per pixel of a microscope image, inclusive: from oil-immersion patches
#: (about 0.05) to low-power overviews. Anything outside is a typo or a unit error (nm, mm).
MPP_RANGE = (0.01, 50.0)


class SpecError(ValueError):
    """A lineage spec is malformed, or does not match a data set's class folders."""


def _validate_name(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise SpecError(f"{what} must be a string, got {type(value).__name__} {value!r}")
    if not value.strip():
        raise SpecError(f"{what} is empty")
    if value != value.strip():
        raise SpecError(f"{what} {value!r} has leading or trailing whitespace")
    if "/" in value or "\\" in value or value in (".", ".."):
        raise SpecError(f"{what} {value!r} cannot be a folder name")
    return value


def check_microns_per_pixel(value: Any, what: str = "microns_per_pixel") -> float:
    """``value`` as a float within :data:`MPP_RANGE`; :class:`SpecError` saying why not."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpecError(f"{what} must be a number (micrometres per pixel), got {value!r}")
    lo, hi = MPP_RANGE
    if not (math.isfinite(value) and lo <= value <= hi):
        raise SpecError(
            f"{what} = {value!r} is not a plausible pixel size; give micrometres per pixel "
            f"between {lo:g} and {hi:g} (e.g. 0.25 for a 40x scan)"
        )
    return float(value)


@dataclass(frozen=True)
class Lineage:
    """One maturation series: ``classes`` ordered from the most immature to the most mature."""

    name: str
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        _validate_name(self.name, "lineage name")
        if isinstance(self.classes, str) or not isinstance(self.classes, Iterable):
            raise SpecError(f"lineage {self.name!r}: classes must be a list of class names")
        classes = tuple(self.classes)
        object.__setattr__(self, "classes", classes)
        for c in classes:
            _validate_name(c, f"lineage {self.name!r}: class name")
        if len(classes) == 0:
            raise SpecError(f"lineage {self.name!r} has no classes; a lineage needs at least 2")
        if len(classes) == 1:
            raise SpecError(
                f"lineage {self.name!r} has only one class ({classes[0]!r}); a lineage needs at least 2 "
                "ordered classes - put a lone class under [other]"
            )


@dataclass(frozen=True)
class LineageSpec:
    """Lineages (each ordered immature -> mature) plus classes without a maturity order.

    ``ignore`` names class folders of a data set that are not part of the model (for example the
    artefact or "not identifiable" folders of a public data set); loaders skip them.
    ``microns_per_pixel`` is the physical size of the data set's pixels, ``None`` when unknown.
    """

    lineages: tuple[Lineage, ...]
    other: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    microns_per_pixel: float | None = None

    def __post_init__(self) -> None:
        if self.microns_per_pixel is not None:
            object.__setattr__(self, "microns_per_pixel", check_microns_per_pixel(self.microns_per_pixel))
        lineages = tuple(self.lineages)
        for field_name in ("other", "ignore"):
            value = getattr(self, field_name)
            if isinstance(value, str) or not isinstance(value, Iterable):
                raise SpecError(f"{field_name} must be a list of names, not {type(value).__name__}")
            object.__setattr__(self, field_name, tuple(value))
        other, ignore = self.other, self.ignore
        object.__setattr__(self, "lineages", lineages)
        if not lineages:
            raise SpecError("the spec has no lineage; at least one [[lineage]] is needed")
        for lin in lineages:
            if not isinstance(lin, Lineage):
                raise SpecError(f"lineages must be Lineage objects, got {type(lin).__name__}")
        for c in other:
            _validate_name(c, "other class name")
        seen_lineages: set[str] = set()
        for lin in lineages:
            if lin.name in seen_lineages:
                raise SpecError(f"duplicate lineage name {lin.name!r}")
            seen_lineages.add(lin.name)
        where: dict[str, str] = {}
        for owner, classes in [(f"lineage {lin.name!r}", lin.classes) for lin in lineages] + [
            ("other", other)
        ]:
            for c in classes:
                if c in where:
                    first = where[c]
                    place = f"twice in {owner}" if first == owner else f"in both {first} and {owner}"
                    raise SpecError(f"duplicate class {c!r}: listed {place}")
                where[c] = owner
        seen_ignored: set[str] = set()
        for c in ignore:
            _validate_name(c, "ignored folder name")
            if c in where:
                raise SpecError(f"duplicate class {c!r}: listed in both {where[c]} and ignore")
            if c in seen_ignored:
                raise SpecError(f"duplicate class {c!r}: listed twice in ignore")
            seen_ignored.add(c)

    # -- class order -----------------------------------------------------------------------
    @property
    def classes(self) -> tuple[str, ...]:
        """All classes: each lineage's classes in stage order, then the other classes."""
        return tuple(c for lin in self.lineages for c in lin.classes) + self.other

    @property
    def lineage_names(self) -> tuple[str, ...]:
        return tuple(lin.name for lin in self.lineages)

    def class_index(self, name: str) -> int:
        """Index of ``name`` in :attr:`classes`; :class:`SpecError` naming the valid classes if unknown."""
        classes = self.classes
        try:
            return classes.index(name)
        except ValueError:
            raise SpecError(_unknown_class_message(name, classes)) from None

    def stage_of(self, name: str) -> tuple[int, int] | None:
        """``(lineage index, stage index)`` of a lineage class, ``None`` for an other class."""
        for li, lin in enumerate(self.lineages):
            if name in lin.classes:
                return li, lin.classes.index(name)
        if name in self.other:
            return None
        raise SpecError(_unknown_class_message(name, self.classes))

    def lineage_class_indices(self) -> list[list[int]]:
        """Per lineage, the indices (into :attr:`classes`) of its classes in stage order."""
        out: list[list[int]] = []
        start = 0
        for lin in self.lineages:
            out.append(list(range(start, start + len(lin.classes))))
            start += len(lin.classes)
        return out

    # -- serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Plain JSON-able form: ``{"lineages": [{"name", "classes"}], "other": [...]}``.

        ``"ignore"`` appears only when the spec ignores folders, ``"imaging"``
        (``{"microns_per_pixel": ...}``) only when the scale is known.
        """
        d: dict[str, Any] = {
            "lineages": [{"name": lin.name, "classes": list(lin.classes)} for lin in self.lineages],
            "other": list(self.other),
        }
        if self.ignore:
            d["ignore"] = list(self.ignore)
        if self.microns_per_pixel is not None:
            d["imaging"] = {"microns_per_pixel": self.microns_per_pixel}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LineageSpec:
        """Inverse of :meth:`to_dict`, with the same validation as a TOML file."""
        if not isinstance(d, Mapping):
            raise SpecError(f"a spec must be a mapping, got {type(d).__name__}")
        _check_keys(d, _DICT_KEYS, "spec")
        if "lineages" not in d:
            raise SpecError("spec has no 'lineages'")
        raw = d["lineages"]
        if not isinstance(raw, list):
            raise SpecError("spec 'lineages' must be a list")
        lineages = []
        for i, item in enumerate(raw):
            lineages.append(_lineage_from_mapping(item, f"lineage #{i + 1}"))
        other = d.get("other", [])
        if not isinstance(other, list):
            raise SpecError("spec 'other' must be a list of class names")
        ignore = d.get("ignore", [])
        if not isinstance(ignore, list):
            raise SpecError("spec 'ignore' must be a list of folder names")
        mpp = _imaging(d.get("imaging", {}), "spec 'imaging'")
        return cls(tuple(lineages), tuple(other), tuple(ignore), mpp)

    def to_toml(self) -> str:
        """The ``lineages.toml`` text of this spec; :func:`parse_spec` reads it back unchanged."""
        lines: list[str] = []
        for lin in self.lineages:
            lines += ["[[lineage]]", f"name = {_toml_str(lin.name)}"]
            lines += [f"classes = {_toml_list(lin.classes)}", ""]
        lines += ["[other]", f"classes = {_toml_list(self.other)}", ""]
        if self.ignore:
            lines += ["[ignore]", f"folders = {_toml_list(self.ignore)}", ""]
        if self.microns_per_pixel is not None:
            lines += ["[imaging]", f"microns_per_pixel = {self.microns_per_pixel!r}", ""]
        return "\n".join(lines)

    # -- data set check --------------------------------------------------------------------
    def check_folders(self, names: Iterable[str]) -> None:
        """Raise :class:`SpecError` unless ``names`` (class folder names) are exactly the spec's classes.

        Folders under ``ignore`` are allowed (present or not). All mismatches are listed at once:
        folders the spec does not name, and spec classes that have no folder.
        """
        names = set(names) - set(self.ignore)
        classes = self.classes
        unknown = sorted(names - set(classes))
        missing = [c for c in classes if c not in names]
        if not unknown and not missing:
            return
        parts = []
        if unknown:
            hints = []
            for u in unknown:
                close = difflib.get_close_matches(u, missing or classes, n=1)
                hints.append(f"{u!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            parts.append(f"class folder(s) not named in the spec: {', '.join(hints)}")
        if missing:
            parts.append(f"spec class(es) without a folder: {', '.join(repr(m) for m in missing)}")
        raise SpecError("; ".join(parts))


def _unknown_class_message(name: str, classes: tuple[str, ...]) -> str:
    return f"unknown class {name!r}; the spec's classes are: {', '.join(classes)}"


def _check_keys(d: Mapping[str, Any], allowed: tuple[str, ...], what: str) -> None:
    unknown = [k for k in d if k not in allowed]
    if unknown:
        raise SpecError(
            f"unknown key(s) {', '.join(repr(k) for k in unknown)} in {what}; allowed: {', '.join(allowed)}"
        )


def _lineage_from_mapping(item: Any, what: str) -> Lineage:
    if not isinstance(item, Mapping):
        raise SpecError(f"{what} must be a table with 'name' and 'classes'")
    label = f"lineage {item['name']!r}" if isinstance(item.get("name"), str) else what
    _check_keys(item, _LINEAGE_KEYS, label)
    if "name" not in item:
        raise SpecError(f"{what} has no 'name'")
    if "classes" not in item:
        raise SpecError(f"{label} has no 'classes'")
    if not isinstance(item["classes"], list):
        raise SpecError(f"{label}: 'classes' must be a list of class names")
    return Lineage(item["name"], tuple(item["classes"]))


def _imaging(table: Any, what: str) -> float | None:
    """``microns_per_pixel`` of an ``[imaging]`` table (``None`` when absent)."""
    if not isinstance(table, Mapping):
        raise SpecError(f"{what} must be a table: [imaging] with microns_per_pixel = ...")
    _check_keys(table, _IMAGING_KEYS, "[imaging]")
    value = table.get("microns_per_pixel")
    return None if value is None else check_microns_per_pixel(value, "[imaging] microns_per_pixel")


def _toml_str(s: str) -> str:
    # JSON string escapes are a subset of TOML basic-string escapes.
    return json.dumps(s, ensure_ascii=False)


def _toml_list(items: Iterable[str]) -> str:
    return "[" + ", ".join(_toml_str(s) for s in items) + "]"


def _line_of(text: str, needle: str, occurrence: int = 1) -> int | None:
    """1-based line of the ``occurrence``-th quoted ``needle`` in ``text`` (for error messages)."""
    pattern = re.compile(r"([\"'])" + re.escape(needle) + r"\1")
    count = 0
    for i, line in enumerate(text.splitlines(), start=1):
        code = line.split("#", 1)[0]
        for _ in pattern.finditer(code):
            count += 1
            if count == occurrence:
                return i
    return None


def parse_spec(text: str, source: str = "<string>") -> LineageSpec:
    """Parse and validate ``lineages.toml`` text; errors name ``source`` and, where known, the line."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef,import-not-found,unused-ignore]

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{source}: not valid TOML: {e}") from None
    try:
        unknown = [k for k in data if k not in _TOP_KEYS]
        if unknown:
            raise SpecError(
                f"unknown key(s) {', '.join(repr(k) for k in unknown)}; a spec has [[lineage]] tables "
                "(name, classes), an optional [other] table (classes), an optional [ignore] table "
                "(folders) and an optional [imaging] table (microns_per_pixel)"
            )
        raw = data.get("lineage")
        if raw is None:
            raise SpecError("no [[lineage]] table; at least one lineage is needed")
        if not isinstance(raw, list):
            raise SpecError("'lineage' must be an array of tables: write [[lineage]], not [lineage]")
        lineages = tuple(_lineage_from_mapping(item, f"[[lineage]] #{i + 1}") for i, item in enumerate(raw))
        other_tbl = data.get("other", {})
        if not isinstance(other_tbl, Mapping):
            raise SpecError("'other' must be a table: [other] with classes = [...]")
        _check_keys(other_tbl, _OTHER_KEYS, "[other]")
        other = other_tbl.get("classes", [])
        if not isinstance(other, list):
            raise SpecError("[other] classes must be a list of class names")
        ignore_tbl = data.get("ignore", {})
        if not isinstance(ignore_tbl, Mapping):
            raise SpecError("'ignore' must be a table: [ignore] with folders = [...]")
        _check_keys(ignore_tbl, _IGNORE_KEYS, "[ignore]")
        ignore = ignore_tbl.get("folders", [])
        if not isinstance(ignore, list):
            raise SpecError("[ignore] folders must be a list of folder names")
        mpp = _imaging(data.get("imaging", {}), "'imaging'")
        return LineageSpec(lineages, tuple(other), tuple(ignore), mpp)
    except SpecError as e:
        raise SpecError(f"{source}{_locate(text, str(e))}: {e}") from None


def _locate(text: str, message: str) -> str:
    """Best-effort ``:LINE`` for a validation error, from the first quoted name in ``message``."""
    m = re.search(r"'([^']*)'", message)
    if not m or " has no " in message:
        return ""
    needle = m.group(1)
    if message.startswith("unknown key"):
        for i, line in enumerate(text.splitlines(), start=1):
            if re.match(r"\s*(\[+\s*)?" + re.escape(needle) + r"\s*(=|\])", line):
                return f":{i}"
        return ""
    occurrence = 2 if message.startswith(("duplicate class", "duplicate lineage")) else 1
    found = _line_of(text, needle, occurrence)
    return f":{found}" if found else ""


def load_spec(path: str | Path) -> LineageSpec:
    """Read and validate a ``lineages.toml``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{path}: lineage spec not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"{path}: cannot read lineage spec: {e}") from None
    return parse_spec(text, str(path))


PAPER_SPEC = LineageSpec(
    lineages=(
        Lineage(
            "granulopoiesis",
            ("blast", "promyelocyte", "myelocyte", "metamyelocyte", "band", "segmented"),
        ),
        Lineage(
            "erythropoiesis",
            (
                "proerythroblast",
                "basophilic_erythroblast",
                "polychromatic_erythroblast",
                "orthochromatic_erythroblast",
            ),
        ),
    ),
    other=("basophil", "eosinophil", "lymphocyte", "promonocyte", "monocyte"),
)
"""The paper's 15 classes: two lineages and five classes without a maturity order."""
