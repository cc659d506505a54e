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
"""

from __future__ import annotations


class VarsitysrchError(Exception):
    """Base class of every error raised on purpose by varsitysrch."""


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


def missing(package: str, extra: str, purpose: str) -> MissingDependencyError:
    return MissingDependencyError(
        f"{purpose} needs the optional package {package!r}: pip install 'varsitysrch[{extra}]'"
    )
