import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("TORCH_HOME", "/tmp/bingo-tests-torch-home")
# torch.compile's C++ cache does not tell kernels built under one ATEN_CPU_CAPABILITY from another's: a cache filled by
# a run with AVX-512 kernels fails to build under ATEN_CPU_CAPABILITY=default ("'at::vec' has not been declared").
# One cache per capability keeps both runs of the suite working (and warm).
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR",
                      f"/tmp/bingo-tests-inductor-{os.environ.get('ATEN_CPU_CAPABILITY', 'native')}")

# A test is slow when it starts a process (an entry point, torchrun, a bench script, the demo) or uses a fixture that
# does; `make test-fast` runs the others (`pytest -m "not slow"`), `make test` runs all.
PROCESS_CALLS = ("run_script(", "run_cases(", "subprocess.", "_demo(", "mp.spawn(", "start_processes(")
PROCESS_FIXTURES = {"knn_setup", "distill_data", "probe_data", "rig"}
# `make test` hands whole files to its two test processes in collection order (--no-loadscope-reorder): the files with
# the longest tests first, then those with the most tests, so that both processes finish together. In xdist's own
# order (the most tests first) test_demo.py, three tests of which one takes 80-100 s, came last and ran alone for
# 100 s of a 575-s suite.
RUN_FIRST = ("test_baselines.py", "test_distill.py", "test_demo.py")


def pytest_collection_modifyitems(config, items):
    import inspect
    from collections import Counter

    import pytest

    for item in items:
        function = getattr(item, "function", None)
        source = inspect.getsource(function) if function is not None else ""
        if PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())) or any(c in source for c in PROCESS_CALLS):
            item.add_marker(pytest.mark.slow)
    tests = Counter(item.path.name for item in items)
    items.sort(key=lambda item: (RUN_FIRST.index(item.path.name) if item.path.name in RUN_FIRST else len(RUN_FIRST),
                                 -tests[item.path.name], item.path.name))  # stable: a file's tests keep their order
