"""Root conftest: leave the torch adapter out of doctest collection without torch.

It also imports skquant (and its torch adapter) in every pytest process. xdist's
controller imports the module of each warning a worker reports, from the thread
that reads that worker; two workers reporting at once made two threads race on a
first import of the package, and one of them met a partially initialized module
(an ImportError that stopped the run). Imported here first, the package is whole
before any worker reports.
"""

import importlib.util

import skquant  # noqa: F401

collect_ignore_glob = []
if importlib.util.find_spec("torch") is None:
    collect_ignore_glob.append("skquant/torch/*")
else:
    import skquant.torch  # noqa: F401
