"""Every Redis key name the gateway uses, and nothing else (as arq's constants.py).

Everything lives under one prefix (GATEWAY_PREFIX, "gw"); RQ's own keys (`rq:*`) are RQ's.
Every per-event key expires after the retention period (invitee numbers are personal data).
`Keys(prefix)` builds each name; the Lua scripts (gateway/store/scripts/) are given the prefix
and build the names listed in LUA_KEYS themselves (tests/store/test_keys.py checks that the two
agree). Numbers and URLs never appear in a key name: they are hashed (key names are listed by any
Redis client).

Configuration (gateway/store/events.py):
    {p}:config                 JSON of the applied configuration (targets, aliases, settings)
    {p}:config:version         INCR'd on every change; processes reload when it moves
    {p}:config:changed         pub/sub channel: a configuration was applied (web processes reload)
    {p}:config:digest          sha256 of the JSON, so re-applying the same file is a no-op
    {p}:config:file            JSON of the configuration file as last applied
    {p}:config:api             HASH target name -> JSON of a target made through the admin API
    {p}:config:tokens          HASH token id -> JSON {network, digest, created_at, created_by}: an
                               ingest token made through the admin API (only its sha256 digest)
    {p}:marker                 written by every configuration apply; its absence once a process
                               has seen it means Redis came back EMPTY

Events (the ingest script writes them; gateway/store/ingest.py):
    {p}:event:{id}             JSON of the InvitationEvent
    {p}:event:{id}:deliveries  HASH target -> JSON delivery state
    {p}:event:{id}:attempts    LIST of JSON attempt records, oldest first
    {p}:events                 ZSET of event ids by receive time (ms)
    {p}:events:net:{network}   ZSET of that network's event ids
    {p}:suppressed             ZSET delivery ids held back by an abuse limit -> receive time (ms)
    {p}:trimmed                set for 10 s after the ingest trimmed the global indexes (events,
                               suppressed) of what is past retention
    {p}:dedupe:{digest}        the first event id of an invitation, for the dedupe window
    {p}:counters               HASH duplicates, suppressed: counts since the start
    {p}:{limit}                abuse-limit logs, counters and holds (`limit_key`: lim:, lim1:,
                               cool:, guard:, hold: and a digest), each expiring with its window
    {p}:holds                  HASH hold key ({p}:hold:...) -> JSON {network, prefix, reason,
                               since, ends, told, lifted}: the guard's holds, listed, lifted and
                               told to the alert target (a hold lives on in it until a worker's
                               ticker has told its end)

The delivery queue (gateway/store/queue.py):
    {p}:due                    ZSET delivery id -> ms when it may be attempted. Waiting
                               deliveries, and claimed ones with their lease expiry as score: a
                               worker that dies holding one lets the lease run out, and the
                               delivery is due again.
    {p}:parked:{target}        ZSET deliveries held back: the target is paused, disabled or at its
                               concurrency cap. Resuming moves them back to `due`.
    {p}:held                   SET of paused or disabled targets
    {p}:target:{name}          HASH health: state (active|paused|disabled), manual, reason, since,
                               failures (consecutive), first_failure_at
    {p}:inflight:{target}      ZSET deliveries being sent -> lease expiry (concurrency caps)
    {p}:rate:{target}          theoretical arrival time (GCRA) of the target's next request slot
    {p}:reserved               HASH delivery id -> its reserved rate slot
    {p}:throttle:{target}      ms until which the target asked us to wait (429 Retry-After)
    {p}:probes                 HASH deliveries let through a paused target as its probe
    {p}:probe-at:{target}      set while a probe interval runs
    {p}:dead                   ZSET failed and expired deliveries -> ms (dead letters)
    {p}:deadlines              ZSET waiting deliveries to targets with an expire_after -> the ms it
                               passes (set at ingest); a worker's ticker records them expired then
    {p}:wake                   set while a drain job is queued (a backlog is one job, not thousands)
    {p}:alerted:{what}         set while an alert of that kind may not be sent again

The callbacks inspector (scripts/callbacks.lua, gateway/store/callbacks.py), capped lists of
JSON entries, newest first, each living GATEWAY_CALLBACKS_DAYS after its last push:
    {p}:callbacks:net:{network}       callbacks the ingest took (accepted, duplicate, suppressed,
                                      spooled): pushed by the ingest script with their accept
    {p}:callbacks:rejected:{network}  rejected callbacks of that network (each web's writer)
    {p}:callbacks:unroutable          rejected callbacks whose network could not be told
    {p}:callbacks:networks            ZSET network -> ms of its last entry
    {p}:callbacks:test:{digest}       a one-time ingest token of "send test callback" -> JSON
                                      {network, test_id}, for a minute

Operations (gateway/store/events.py, gateway/store/ops.py). Only names are ever written, never
the values of environment variables:
    {p}:env:wanted             SET of variable names `targets apply` asks the workers about (10 min)
    {p}:env:workers            ZSET worker -> ms of its last report
    {p}:env:worker:{name}      HASH have (JSON names), asked (JSON names), at (ms); expires (TTL)
    {p}:metrics                HASH "name\\x1flabel..." -> count: every process adds its counts
    {p}:heartbeats             ZSET worker (host:pid) -> ms its ticker last wrote

Admin API keys (gateway/admin/keys.py); they never expire, holding no personal data:
    {p}:apikey:{id}            HASH name, networks, hash (sha256 of the key), created_at,
                               last_used_at, revoked
    {p}:apikeys                ZSET of API key ids by creation time (ms)

Caches and test sends (gateway/store/token_cache.py, gateway/delivery/lookups.py,
gateway/store/testsends.py):
    {p}:oauth2:{digest}        the access token of one token endpoint, client id and scope,
                               expiring shortly before the token does; shared by every worker
    {p}:lookup:{digest}        a lookup's values (JSON), for its `cache` seconds (digest: sha256
                               of the rendered request; it carries a phone number)
    {p}:lookups:{number}       HASH lookup cache key -> network: the answers cached for events of
                               one number (`number_digest`), so that an erasure finds them
                               (gateway/store/erasure.py); lives as long as the longest cache
    {p}:test:{id}              a test send asked for by `gateway targets test` (JSON), until a
                               worker takes it or the asker stops waiting
    {p}:test:{id}:result       what the worker saw (JSON), for a while
    {p}:tests                  ZSET test id -> ms until which its keys may live (for an erasure)
"""

from __future__ import annotations

import hashlib

# The names the Lua scripts build from the prefix they are given ({p}), with a placeholder for
# each variable part. tests/store/test_keys.py checks that the ':...' pieces the .lua files
# append to the prefix are exactly the fixed pieces of these.
LUA_KEYS = (
    "{p}:config:version",
    "{p}:event:{id}",
    "{p}:event:{id}:deliveries",
    "{p}:event:{id}:attempts",
    "{p}:events",
    "{p}:events:net:{network}",
    "{p}:suppressed",
    "{p}:trimmed",
    "{p}:dedupe:{digest}",
    "{p}:counters",
    "{p}:{limit}",
    "{p}:holds",
    "{p}:due",
    "{p}:parked:{target}",
    "{p}:held",
    "{p}:target:{name}",
    "{p}:inflight:{target}",
    "{p}:rate:{target}",
    "{p}:reserved",
    "{p}:throttle:{target}",
    "{p}:probes",
    "{p}:probe-at:{target}",
    "{p}:dead",
    "{p}:deadlines",
    "{p}:wake",
    "{p}:callbacks:net:{network}",
    "{p}:callbacks:rejected:{network}",
    "{p}:callbacks:unroutable",
    "{p}:callbacks:networks",
    "{p}:callbacks:test:{digest}",
)


class Keys:
    """The key names under one prefix: fixed ones as attributes, the others built by methods."""

    __slots__ = (
        "api_keys",
        "callbacks_networks",
        "callbacks_unroutable",
        "config",
        "config_api",
        "config_changed",
        "config_digest",
        "config_file",
        "config_tokens",
        "config_version",
        "counters",
        "dead",
        "deadlines",
        "due",
        "env_wanted",
        "env_workers",
        "events",
        "heartbeats",
        "held",
        "holds",
        "marker",
        "metrics",
        "prefix",
        "probes",
        "reserved",
        "suppressed",
        "tests",
        "wake",
    )

    def __init__(self, prefix: str) -> None:
        p = prefix + ":"
        self.prefix = prefix
        self.config = p + "config"
        self.config_version = p + "config:version"
        self.config_changed = p + "config:changed"  # a pub/sub channel
        self.config_digest = p + "config:digest"
        self.config_file = p + "config:file"
        self.config_api = p + "config:api"
        self.config_tokens = p + "config:tokens"
        self.marker = p + "marker"
        self.events = p + "events"
        self.suppressed = p + "suppressed"
        self.counters = p + "counters"
        self.due = p + "due"
        self.held = p + "held"
        self.holds = p + "holds"
        self.reserved = p + "reserved"
        self.probes = p + "probes"
        self.dead = p + "dead"
        self.deadlines = p + "deadlines"
        self.wake = p + "wake"
        self.env_wanted = p + "env:wanted"
        self.env_workers = p + "env:workers"
        self.metrics = p + "metrics"
        self.heartbeats = p + "heartbeats"
        self.api_keys = p + "apikeys"
        self.callbacks_unroutable = p + "callbacks:unroutable"
        self.callbacks_networks = p + "callbacks:networks"
        self.tests = p + "tests"

    # -- events --------------------------------------------------------------------------------
    def event(self, event_id: str) -> str:
        return f"{self.prefix}:event:{event_id}"

    def deliveries(self, event_id: str) -> str:
        return f"{self.prefix}:event:{event_id}:deliveries"

    def attempts(self, event_id: str) -> str:
        return f"{self.prefix}:event:{event_id}:attempts"

    def network_events(self, network: str) -> str:
        return f"{self.prefix}:events:net:{network}"

    def limit(self, name: str) -> str:
        """An abuse-limit key (`limit_key`'s name: the ingest script adds the prefix itself)."""
        return f"{self.prefix}:{name}"

    # -- the delivery queue ----------------------------------------------------------------------
    def target(self, name: str) -> str:
        """The target's health hash."""
        return f"{self.prefix}:target:{name}"

    def parked(self, target: str) -> str:
        """The target's parked deliveries (`parked("")`: the common start of every such key)."""
        return f"{self.prefix}:parked:{target}"

    def inflight(self, target: str) -> str:
        return f"{self.prefix}:inflight:{target}"

    def alerted(self, what: str) -> str:
        return f"{self.prefix}:alerted:{what}"

    # -- operations ------------------------------------------------------------------------------
    def env_worker(self, name: str) -> str:
        return f"{self.prefix}:env:worker:{name}"

    def api_key(self, key_id: str) -> str:
        return f"{self.prefix}:apikey:{key_id}"

    # -- the callbacks inspector -----------------------------------------------------------------
    def callbacks(self, network: str) -> str:
        """The callbacks of `network` the ingest took."""
        return f"{self.prefix}:callbacks:net:{network}"

    def callbacks_rejected(self, network: str) -> str:
        return f"{self.prefix}:callbacks:rejected:{network}"

    def callbacks_test(self, digest: str) -> str:
        return f"{self.prefix}:callbacks:test:{digest}"

    # -- caches and test sends -------------------------------------------------------------------
    def oauth2(self, digest: str) -> str:
        return f"{self.prefix}:oauth2:{digest}"

    def lookup(self, digest: str) -> str:
        return f"{self.prefix}:lookup:{digest}"

    def lookups_of(self, number: str) -> str:
        """The lookup answers cached for one number (`number_digest`)."""
        return f"{self.prefix}:lookups:{number}"

    def send_test(self, test_id: str) -> str:
        return f"{self.prefix}:test:{test_id}"

    def send_test_result(self, test_id: str) -> str:
        return f"{self.prefix}:test:{test_id}:result"


def limit_key(kind: str, *parts: object) -> str:
    """An abuse-limit key, without the prefix (the ingest script adds it): `kind:digest`.

    kind: lim (a limit's sliding log: a sorted set), lim1 (a limit of one: a key), cool (a
    cooldown), guard (a prefix guard's counts per fixed window), hold (a held prefix). Hashed:
    numbers are personal data and have no place in key names.
    """
    digest = hashlib.sha256("\x00".join(map(str, parts)).encode()).hexdigest()[:24]
    return f"{kind}:{digest}"


def number_digest(digits: str) -> str:
    """A phone number's digits (no +) as a key name may hold it: hashed."""
    return hashlib.sha256(("number\x00" + digits).encode()).hexdigest()[:24]
