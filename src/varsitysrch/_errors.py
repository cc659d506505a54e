"""The exceptions varsitysrch raises.

::

    VarsitysrchError                    base of everything below
    ├── InvalidArgumentError(ValueError)   a bad argument: names the parameter, value and rule
    ├── ImageError(ValueError)             an image that cannot be decoded (query images)
    ├── FeatureStoreError(OSError)         a missing, corrupt or incompatible feature store
    ├── ModelFileError(ValueError)         a missing, corrupt, unsafe or incompatible model file
    │   └── IncompatibleModelError         model and features/extractor do not match
    ├── NotFittedError(ValueError)         an estimator used before ``fit``
    └── MissingDependencyError(ImportError) an optional extra is not installed

Every class subclasses the matching built-in, so ``except ValueError`` keeps working.
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


class IncompatibleModelError(ModelFileError):
    """A model and the features, extractor or catalogue it is used with do not match."""


class NotFittedError(VarsitysrchError, ValueError):
    """An estimator was used before ``fit``."""


class MissingDependencyError(VarsitysrchError, ImportError):
    """An optional dependency is needed; the message names the extra to install."""


def missing(package: str, extra: str, purpose: str) -> MissingDependencyError:
    return MissingDependencyError(
        f"{purpose} needs the optional package {package!r}: pip install 'varsitysrch[{extra}]'"
    )
