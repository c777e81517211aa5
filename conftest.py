"""Root conftest: leave the torch adapter out of doctest collection without torch."""

import importlib.util

collect_ignore_glob = []
if importlib.util.find_spec("torch") is None:
    collect_ignore_glob.append("skquant/torch/*")
