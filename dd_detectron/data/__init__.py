# Importing datasets registers the builtin datasets (see datasets/__init__.py).
from . import datasets  # noqa: F401
