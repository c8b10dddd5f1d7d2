"""``attnlens.data`` is ``attnlens.tiny.data``, the synthetic data of the teaching kit, under its top-level name.

The module replaces itself in ``sys.modules``, so the two names are one module object:
``from attnlens.data import ...`` and monkeypatching either name behave the same.
"""

import sys

from attnlens.tiny import data as _kit_module

sys.modules[__name__] = _kit_module
