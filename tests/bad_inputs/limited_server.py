"""server.py under an address-space limit, for tests/test_bad_inputs.py.

A hostile input that makes the server allocate tens of gigabytes (a 1x100000 strip resized to a 256-pixel
short side is 19 GB) must fail inside the server, as an error the test records, not take the shared test
machine down with it. RLIMIT_AS (BAD_INPUTS_AS_LIMIT bytes, per process, inherited by every worker) does
that; the test's own watchdog kills the process group past a resident-memory bound below it. Nothing else
differs from `python server.py`.
"""

import os
import resource

if __name__ == "__main__":
    import sys
    from pathlib import Path

    limit = int(os.environ.get("BAD_INPUTS_AS_LIMIT", str(12 * 1024**3)))
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))  # run as a script from the root
    from server import main

    main()
