"""``attnlens.training`` is ``attnlens.tiny.training``, the training loop of the teaching kit, under its top-level name.

The module replaces itself in ``sys.modules``, so the two names are one module object:
``from attnlens.training import ...`` and monkeypatching either name behave the same.
"""

import sys

from attnlens.tiny import training as _kit_module

sys.modules[__name__] = _kit_module
