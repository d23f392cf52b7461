"""server.py for the HTTP tests against osmem-server (the in-memory Elasticsearch stand-in).

elasticsearch-py 9 sends `application/vnd.elasticsearch+json; compatible-with=9`, which osmem refuses
(tests/store_backends.py's PlainJsonNode does the same rewrite for the in-process store tests). Here the
server builds its own client, in its HTTP processes (forked from this one) and in its model workers
(spawned: they run this file again as `__mp_main__`, so the patch below reaches them too). The rewrite
lives only in this launcher: the server's code and configuration are the production ones.
"""

from elastic_transport import Urllib3HttpNode

_perform_request = Urllib3HttpNode.perform_request


def _plain_json(self, method, target, body=None, headers=None, **kwargs):
    fixed = dict(headers or {})
    for name in list(fixed):
        if name.lower() in ("content-type", "accept") and "compatible-with" in str(fixed[name]):
            fixed[name] = "application/json"
    return _perform_request(self, method, target, body=body, headers=fixed, **kwargs)


Urllib3HttpNode.perform_request = _plain_json

if __name__ == "__main__":
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from the repository root
    from server import main

    main()
