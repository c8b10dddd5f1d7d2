"""``attnlens.model`` is ``attnlens.tiny.model``, the tiny transformer of the teaching kit, under its top-level name.

The module replaces itself in ``sys.modules``, so the two names are one module object:
``from attnlens.model import ...`` and monkeypatching either name behave the same.
"""

import sys

from attnlens.tiny import model as _kit_module

sys.modules[__name__] = _kit_module
