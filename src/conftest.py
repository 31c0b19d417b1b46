"""Import paranorm before pytest collects doctests from src/paranorm.

With ``--import-mode=importlib``, when the package is not yet imported, pytest imports the first
collected submodule a second time and rebinds it on the package: collecting
``src/paranorm/weight_norm.py`` first would make ``paranorm.weight_norm`` that module instead of
the function. Importing the package here first makes pytest reuse the modules already loaded.
"""

import paranorm  # noqa: F401
