"""The exceptions varsitysrch raises.

::

    VarsitysrchError                      base of everything below
    ├── InvalidArgumentError(ValueError)     a bad argument: names the parameter, value and rule
    ├── ImageError(ValueError)               an image that cannot be decoded (query images)
    ├── FeatureStoreError(OSError)           a missing or corrupt feature store
    │   └── IncompatibleFeaturesError ─┐     a store and the extractor/model do not match
    ├── ModelFileError(ValueError)     │     a missing, corrupt, unsafe or unknown-version model file
    │   └── IncompatibleModelError ────┤     a model and the features/extractor/query do not match
    ├── IncompatibleError(ValueError) ◄┘     either mismatch (both classes above are one)
    ├── NotFittedError(ValueError)           an estimator used before ``fit``
    └── MissingDependencyError(ImportError)  an optional extra or weights package is not installed

Every class subclasses the matching built-in, so ``except ValueError`` keeps working.
``except IncompatibleError`` catches any "made with a different extractor / dim" error,
whichever file it was found in.  Messages are one line: the CLI prints ``error: <message>``
and exits with status 2 for every one of them (a traceback only with ``-v``).

Messages name the Python parameter, the value and the rule (scikit-learn style:
``num_clusters must be in [2, n_images] = [2, 24]; got 0``).  A front end whose user typed
something else (a CLI flag, a form field) shows the message through :func:`user_message` with
its own names for the parameters: ``-k/--num-clusters must be in [2, 24]; got 0``.  Every error
carries ``param``: the parameter its message starts with (given as ``param=`` or read from the
message), ``None`` when it names none.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Mapping

__all__ = [
    "FeatureStoreError",
    "ImageError",
    "IncompatibleError",
    "IncompatibleFeaturesError",
    "IncompatibleModelError",
    "InvalidArgumentError",
    "MissingDependencyError",
    "ModelFileError",
    "NotFittedError",
    "VarsitysrchError",
    "missing",
    "strip_reprs",
    "user_message",
]


#: the start of a scikit-learn style message: ``<parameter> must ...``, ``<parameter> '<value>' ...``
_LEADING_PARAM = re.compile(r"([a-z_][a-z0-9_]*) (?=must |'|\"|=|does |is |has |of |cannot |needs )")


class VarsitysrchError(Exception):
    """Base class of every error raised on purpose by varsitysrch.

    ``param``: the Python parameter the error is about (``param=`` or, by default, the parameter the
    message starts with in the ``<parameter> must ...`` style), ``None`` when none.
    """

    param: str | None

    def __init__(self, *args: object, param: str | None = None) -> None:
        super().__init__(*args)
        if param is None and args and isinstance(args[0], str):
            m = _LEADING_PARAM.match(args[0])
            param = m.group(1) if m else None
        self.param = param


class InvalidArgumentError(VarsitysrchError, ValueError):
    """An argument is out of range or of the wrong kind."""


class ImageError(VarsitysrchError, ValueError):
    """An image could not be read or decoded."""


class FeatureStoreError(VarsitysrchError, OSError):
    """A feature store is missing, corrupt or incompatible."""


class ModelFileError(VarsitysrchError, ValueError):
    """A model file is missing, corrupt, unsafe to load or of an unknown version."""


class IncompatibleError(VarsitysrchError, ValueError):
    """Two things made differently are used together (extractor, dim, graph version)."""


class IncompatibleFeaturesError(FeatureStoreError, IncompatibleError):
    """A feature store and the extractor or model it is used with do not match."""


class IncompatibleModelError(ModelFileError, IncompatibleError):
    """A model and the features, extractor or query it is used with do not match."""


class NotFittedError(VarsitysrchError, ValueError):
    """An estimator was used before ``fit``."""


class MissingDependencyError(VarsitysrchError, ImportError):
    """An optional dependency is needed; the message names the extra to install."""


#: extras that only exist for developers: never the advice to a user
_DEV_EXTRAS = frozenset({"dev"})


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements() -> list[tuple[str, str, str | None]]:
    """``(name, specifier as written, extra or None)`` of varsitysrch's installed requirements
    (``[]`` when its metadata is not installed, e.g. a source tree on ``PYTHONPATH``)."""
    try:
        from importlib.metadata import PackageNotFoundError, requires
    except ImportError:  # pragma: no cover
        return []
    try:
        reqs = requires("varsitysrch") or []
    except PackageNotFoundError:
        return []
    out = []
    for r in reqs:
        spec, _, marker = r.partition(";")
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?", spec)
        if not m:
            continue
        extra = re.search(r"extra\s*==\s*[\"']([^\"']+)[\"']", marker)
        name = m.group(1) + (m.group(2) or "")
        out.append((name, spec.strip(), extra.group(1) if extra else None))
    return out


def _install_advice(package: str, extra: str | None = None) -> str:
    """The one pip command that installs ``package`` for varsitysrch, from its declared requirements.

    A package of a user extra (``serve``, ``dask``) -> ``pip install 'varsitysrch[serve]'``; a core
    dependency missing from this environment -> ``pip install 'matplotlib>=3.8'`` (as declared);
    unknown to the metadata -> ``extra`` when that extra exists, else ``pip install '<package>'``.
    """
    want = _norm(package)
    reqs = _requirements()
    extras_known = {e for _, _, e in reqs if e is not None}
    for name, spec, req_extra in reqs:  # core dependencies first: they are in every install
        base, _, inner = name.partition("[")
        names = {_norm(base)} | {_norm(x) for x in inner.rstrip("]").split(",") if x}
        if want in names and req_extra is None:
            return f"pip install '{spec}' (a dependency of varsitysrch missing from this environment)"
    for name, _spec, req_extra in reqs:
        base, _, inner = name.partition("[")
        names = {_norm(base)} | {_norm(x) for x in inner.rstrip("]").split(",") if x}
        if want in names and req_extra is not None and req_extra not in _DEV_EXTRAS:
            return f"pip install 'varsitysrch[{req_extra}]'"
    if extra is not None and extra in extras_known and extra not in _DEV_EXTRAS:
        return f"pip install 'varsitysrch[{extra}]'"
    return f"pip install '{package}'"


def missing(package: str, extra: str | None, purpose: str) -> MissingDependencyError:
    """The error for an ImportError of ``package``: what needs it and the pip command that installs
    it (:func:`_install_advice`; ``extra``: the varsitysrch extra expected to provide it, a hint only)."""
    return MissingDependencyError(
        f"{purpose} needs the package {package!r}, which is not installed: {_install_advice(package, extra)}"
    )


# ---------------------------------------------------------------- messages in the user's words
#: a Python object's default repr (``<_io.BytesIO object at 0x7f...>``): never shown to a user
_OBJECT_REPR = re.compile(r"<[^<>]*? (?:object|at) (?:at )?0x[0-9a-fA-F]+>")
#: ``[2, n_images] = [2, 24]``: a symbolic range and its value -> the value
_SYMBOLIC_RANGE = re.compile(r"([\[(][^\[\]()]*[a-z_][^\[\]()]*[\])]) = ([\[(][-0-9., e+]*[\])])")


def strip_reprs(text: str) -> str:
    """``text`` without Python object reprs (``<... object at 0x...>`` -> ``the data``)."""
    return _OBJECT_REPR.sub("the data", text)


def _name_pattern(name: str) -> re.Pattern[str]:
    # a whole identifier: not inside another name, a flag (--csv_file), a path or a file name (x.csv_file)
    return re.compile(rf"(?<![\w./-]){re.escape(name)}(?![\w/-])")


def _rename_params(text: str, names: Mapping[str, str]) -> str:
    """``text`` with each Python parameter name of ``names`` replaced by what the user typed
    (``{"num_clusters": "-k/--num-clusters"}``); a symbolic range ``[2, n_images] = [2, 24]`` becomes
    its value ``[2, 24]``.  Quoted values (``'...'``) are left as they are."""
    text = _SYMBOLIC_RANGE.sub(r"\2", text)
    if not names:
        return text
    # split off quoted values (paths, ids) so a file called "top_n" is never renamed
    parts = re.split(r"('(?:[^'\\]|\\.)*')", text)
    for i in range(0, len(parts), 2):
        for name in sorted(names, key=len, reverse=True):
            parts[i] = _name_pattern(name).sub(lambda _m, n=name: names[n], parts[i])
    return "".join(parts)


def _os_error_message(exc: OSError) -> str:
    """An ``OSError`` in words, naming its file: ``'/x/y': Permission denied``.

    Without the ``[Errno 13]`` prefix; ``exc.filename`` is the file the user named wherever varsitysrch
    raised it (an atomic write reports its target, never its temporary name).
    """
    reason = (exc.strerror or str(exc) or type(exc).__name__).strip()
    if exc.filename is None:
        return strip_reprs(reason)
    name = repr(str(exc.filename))
    if exc.filename2 is not None:
        name += f" -> {str(exc.filename2)!r}"
    if exc.errno in (errno.ENOENT,):
        return f"{reason}: {name}"
    return f"{name}: {reason}"


def user_message(exc: BaseException, names: Mapping[str, str] | None = None) -> str:
    """The one line a front end shows for ``exc``: the message with the parameters in the user's
    words (:func:`_rename_params` with ``names``), OS errors without ``[Errno N]``, no object reprs,
    several lines joined with ``"; "``."""
    if isinstance(exc, OSError) and not isinstance(exc, VarsitysrchError) and exc.strerror:
        text = _os_error_message(exc)
    else:
        text = str(exc)
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    text = "; ".join(lines) if lines else type(exc).__name__
    return strip_reprs(_rename_params(text, names or {}))
