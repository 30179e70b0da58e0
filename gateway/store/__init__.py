"""Everything the gateway keeps in Redis, one module per concept.

    keys.py         every key name, and nothing else
    events.py       Store: configuration, events and their read queries, retention, the data
                    marker, the workers' environment reports
    ingest.py       the ingest script's caller: the one way events are written
    queue.py        DeliveryQueue: claim, complete, hand back, pause, resume, probe, replay, health
    holds.py        the prefix guard's holds: listed, lifted, told to the alert target
    token_cache.py  OAuth2 access tokens shared by the workers
    testsends.py    `gateway targets test` requests and results
    ops.py          OpsKeys: what /metrics and /readyz read
    codec.py        compact JSON, replies as text, times in ms
    lua.py          loads scripts/*.lua (package data), one file per script

Each script's arguments are encoded by the module that calls it (ingest.py, queue.py), in the
order the script reads them.
"""
