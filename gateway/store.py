"""Redis keys and operations: configuration, events, deliveries, attempts.

This is the only module that knows key names. Everything lives under one prefix, and every
per-event key expires after the retention period (invitee numbers are personal data).

    {p}:config                 JSON of the applied configuration (targets, aliases, settings)
    {p}:config:version         INCR'd on every change; processes reload when it moves
    {p}:config:digest          sha256 of the JSON, so re-applying the same file is a no-op
    {p}:config:file            JSON of the configuration file as last applied
    {p}:config:api             HASH target name -> JSON of a target made through the admin API
    {p}:event:{id}             JSON of the InvitationEvent
    {p}:event:{id}:deliveries  HASH target -> JSON delivery state
    {p}:event:{id}:attempts    LIST of JSON attempt records, oldest first
    {p}:events                 ZSET of event ids by receive time (ms)
    {p}:events:net:{network}   ZSET of that network's event ids
    {p}:trimmed                set for 10 s after the ingest trimmed the global indexes (events,
                               suppressed) of what is past retention
    {p}:apikey:{id}            HASH of an admin API key (gateway.admin.keys): name, networks,
                               hash (sha256 of the key), created_at, last_used_at, revoked
    {p}:apikeys                ZSET of API key ids by creation time (ms)

and the delivery queue, described with its Lua scripts below.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redis import Redis
from redis.client import Pipeline

from gateway.events import INVITATION_ACCEPTED, InvitationEvent
from gateway.fastredis import FastRedis, Script, ScriptsViaRedisPy
from gateway.networks import NetworkPolicy, prefix_allowed, prefix_of

if TYPE_CHECKING:
    import redis.asyncio as aioredis

from gateway.records import Delivery, DeliveryStatus, delivery_id, split_delivery_id

PENDING = DeliveryStatus.PENDING.value
DELIVERED = DeliveryStatus.DELIVERED.value
RETRYING = DeliveryStatus.RETRYING.value
FAILED = DeliveryStatus.FAILED.value
SKIPPED = DeliveryStatus.SKIPPED.value
WAKE_TTL = 30  # seconds a queued drain job keeps others from being queued


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class Store:
    redis: Redis
    prefix: str = "gw"
    retention: int = 30 * 86400  # seconds

    # -- keys -------------------------------------------------------------------------------
    def _k(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    @property
    def config_key(self) -> str:
        return self._k("config")

    @property
    def config_version_key(self) -> str:
        return self._k("config", "version")

    @property
    def config_channel(self) -> str:
        return self._k("config", "changed")

    def event_key(self, event_id: str) -> str:
        return self._k("event", event_id)

    # -- admin API keys (gateway.admin.keys); never expire: they hold no personal data --------
    def api_key_key(self, key_id: str) -> str:
        return self._k("apikey", key_id)

    @property
    def api_keys_index(self) -> str:
        return self._k("apikeys")

    # -- configuration ----------------------------------------------------------------------
    def save_config(self, config: dict[str, Any]) -> tuple[int, bool]:
        """Store the configuration file's content; returns (version, changed).

        What every process loads ({p}:config) is the file's configuration plus the targets made
        through the admin API whose names the file does not declare: on a clash the file wins and
        the API-made target is deleted. The same content again is a no-op.
        """
        return self._write_config(file_config=config)

    def api_targets(self) -> dict[str, dict[str, Any]]:
        """The targets made through the admin API, by name."""
        return {_text(k): json.loads(v) for k, v in self.redis.hgetall(self._k("config", "api")).items()}

    def save_api_target(self, target: dict[str, Any], replace: str | None = None) -> tuple[int, bool]:
        """Add or change an API-made target (validated by the caller) for every process.

        `replace`: the name of the API-made target this one replaces (a rename), or None.
        """
        return self._write_config(api_set=target, api_delete=replace)

    def delete_api_target(self, name: str) -> tuple[int, bool]:
        return self._write_config(api_delete=name)

    def _write_config(
        self,
        file_config: dict[str, Any] | None = None,
        api_set: dict[str, Any] | None = None,
        api_delete: str | None = None,
    ) -> tuple[int, bool]:
        fk, ak, ck, dk, vk = (
            self._k("config", "file"),
            self._k("config", "api"),
            self._k("config"),
            self._k("config", "digest"),
            self._k("config", "version"),
        )

        def write(pipe: Pipeline) -> tuple[int, bool]:
            # WATCHed: a concurrent `targets apply` or API change makes this run again.
            if file_config is not None:
                file_part = file_config
            else:
                # Before the first API-made target, {p}:config is the file's configuration.
                blob = pipe.get(fk) or pipe.get(ck)
                file_part = json.loads(blob) if blob else {}
            api = {_text(k): json.loads(v) for k, v in pipe.hgetall(ak).items()}
            if api_delete is not None:
                api.pop(api_delete, None)
            if api_set is not None:
                api[api_set["name"]] = api_set
            file_targets = list(file_part.get("targets", []))
            declared = {t.get("name") for t in file_targets}
            shadowed = sorted(declared & api.keys())
            merged = {
                **file_part,
                "targets": file_targets + [api[n] for n in sorted(api) if n not in declared],
            }
            blob = _dumps(merged)
            digest = hashlib.sha256(blob.encode()).hexdigest()
            changed = pipe.get(dk) != digest.encode()
            pipe.multi()
            pipe.set(fk, _dumps(file_part))
            if api_delete is not None or shadowed:
                pipe.hdel(ak, *{*shadowed, *([api_delete] if api_delete is not None else [])})
            if api_set is not None and api_set["name"] not in declared:
                pipe.hset(ak, api_set["name"], _dumps(api_set))
            pipe.set(self._k("marker"), str(now_ms()), nx=True)  # (see redis_lost_data)
            if changed:
                pipe.set(ck, blob)
                pipe.set(dk, digest)
                pipe.incr(vk)
                pipe.publish(self.config_channel, "changed")  # web processes reload at once
            results = pipe.execute()
            return (int(results[-2]), True) if changed else (-1, False)

        version, changed = self.redis.transaction(  # type: ignore[misc]
            write,  # type: ignore[arg-type]
            fk,
            ak,
            ck,
            dk,
            value_from_callable=True,
        )
        if not changed:
            return self.config_version(), False
        return int(version), True

    def load_config(self) -> tuple[int, dict[str, Any] | None]:
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.get(self._k("config", "version"))
            pipe.get(self._k("config"))
            version, blob = pipe.execute()
        return int(version or 0), (json.loads(blob) if blob else None)

    def config_version(self) -> int:
        return int(self.redis.get(self._k("config", "version")) or 0)

    def queue_wake(self, pipe: Any) -> None:
        """Add `SET wake NX` to a pipeline: its result says whether a drain job must be queued."""
        pipe.set(self._k("wake"), "1", nx=True, ex=WAKE_TTL)

    def queue_config_version(self, pipe: Pipeline) -> None:
        """Add a read of the config version to an accept pipeline (no extra round trip)."""
        pipe.get(self._k("config", "version"))

    # -- events -----------------------------------------------------------------------------
    def write_event(self, pipe: Any, event: InvitationEvent, target_names: Iterable[str]) -> None:
        """Queue the writes that store an event and its pending deliveries on `pipe`."""
        ttl = self.retention
        ek = self.event_key(event.id)
        pipe.set(ek, _dumps(event.to_dict()), ex=ttl)
        names = list(target_names)
        if names:
            state = _dumps(Delivery(updated_at=event.received_at_ms).to_dict())
            pipe.hset(ek + ":deliveries", mapping=dict.fromkeys(names, state))
            pipe.expire(ek + ":deliveries", ttl)
            # NX: a delivery already waiting or in flight keeps its place (a re-run accept).
            pipe.zadd(
                self._k("due"), {delivery_id(event.id, n): event.received_at_ms for n in names}, nx=True
            )
        cutoff = event.received_at_ms - ttl * 1000
        for index in (self._k("events"), self._k("events", "net", event.network_id)):
            pipe.zadd(index, {event.id: event.received_at_ms})
            pipe.zremrangebyscore(index, "-inf", cutoff)
            pipe.expire(index, ttl)

    def get_event(self, event_id: str) -> InvitationEvent | None:
        blob = self.redis.get(self.event_key(event_id))
        return InvitationEvent.from_dict(json.loads(blob)) if blob else None

    def get_deliveries(self, event_id: str) -> dict[str, dict[str, Any]]:
        raw = self.redis.hgetall(self.event_key(event_id) + ":deliveries")
        return {_text(k): json.loads(v) for k, v in raw.items()}

    def get_delivery(self, event_id: str, target: str) -> dict[str, Any] | None:
        raw = self.redis.hget(self.event_key(event_id) + ":deliveries", target)
        return json.loads(raw) if raw else None

    def get_many_deliveries(
        self, ids: Sequence[str], chunk: int = 500
    ) -> list[tuple[InvitationEvent | None, Delivery | None]]:
        """The event and the state of each delivery id ((None, None) for a malformed one).

        One pipeline per `chunk` ids.
        """
        out: list[tuple[InvitationEvent | None, Delivery | None]] = []
        for start in range(0, len(ids), chunk):
            parts: list[tuple[str, str] | None] = []
            for did in ids[start : start + chunk]:
                try:
                    parts.append(split_delivery_id(did))
                except ValueError:
                    parts.append(None)
            with self.redis.pipeline(transaction=False) as pipe:
                for part in parts:
                    if part is not None:
                        key = self.event_key(part[0])
                        pipe.get(key)
                        pipe.hget(key + ":deliveries", part[1])
                raw = iter(pipe.execute())
            for part in parts:
                if part is None:
                    out.append((None, None))
                    continue
                event_blob, state_blob = next(raw), next(raw)
                out.append(
                    (
                        InvitationEvent.from_dict(json.loads(event_blob)) if event_blob else None,
                        Delivery.from_dict(json.loads(state_blob)) if state_blob else None,
                    )
                )
        return out

    def get_attempts(self, event_id: str) -> list[dict[str, Any]]:
        return [json.loads(a) for a in self.redis.lrange(self.event_key(event_id) + ":attempts", 0, -1)]

    def record_attempt(
        self, event_id: str, target: str, attempt: dict[str, Any], state: dict[str, Any]
    ) -> None:
        """Append an attempt and update the delivery's state, atomically."""
        ek = self.event_key(event_id)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.rpush(ek + ":attempts", _dumps({"target": target, **attempt}))
            pipe.hset(ek + ":deliveries", target, _dumps(state))
            # Created here if the event's keys expired meanwhile: never keep them forever.
            pipe.expire(ek + ":attempts", self.retention)
            pipe.expire(ek + ":deliveries", self.retention)
            pipe.execute()

    def event_index(self, network: str | None = None) -> str:
        """The ZSET of event ids by receive time (ms): every event's, or one network's."""
        return self._k("events", "net", network) if network is not None else self._k("events")

    def recent_events(self, limit: int = 20, network: str | None = None, offset: int = 0) -> list[str]:
        """Event ids, newest first: `limit` of them after the `offset` newest."""
        if limit <= 0:
            return []
        index = self._k("events", "net", network) if network else self._k("events")
        return [_text(m) for m in self.redis.zrevrange(index, offset, offset + limit - 1)]

    def events_with_deliveries(self, ids: Sequence[str]) -> list[tuple[InvitationEvent, dict[str, Any]]]:
        out = []
        for eid in ids:
            ev = self.get_event(eid)
            if ev is not None:
                out.append((ev, self.get_deliveries(eid)))
        return out

    # -- operations: the data marker, the workers' environment names -------------------------
    #
    #   {p}:marker              written by every configuration apply; its absence once a
    #                           process has seen it means Redis came back EMPTY
    #   {p}:env:wanted          SET of variable names `targets apply` asks the workers about (10 min)
    #   {p}:env:workers         ZSET worker -> ms of its last report
    #   {p}:env:worker:{name}   HASH have (JSON names), asked (JSON names), at (ms); expires (TTL)
    #
    # Only names are ever written, never values.

    @property
    def marker_key(self) -> str:
        return self._k("marker")

    def redis_lost_data(self) -> bool:
        """True when this process saw the gateway's marker in Redis and it is gone now.

        That is a Redis restarted without persistence (or flushed): the configuration, waiting
        deliveries and records are gone. The marker is written by `save_config` (every
        `targets apply`, and a web's GATEWAY_CONFIG at its start, even unchanged), never here:
        a process that starts after the loss must not hide it from those that saw the marker.
        The next apply clears the condition. Reported at ERROR once per loss by each process
        that saw the marker.
        """
        ident = _redis_identity(self.redis, self.prefix)
        if self.redis.exists(self.marker_key):
            _SEEN_MARKER.add(ident)
            _LOST_REPORTED.discard(ident)
            return False
        if ident in _SEEN_MARKER:
            if ident not in _LOST_REPORTED:
                _LOST_REPORTED.add(ident)
                _log.error(
                    "Redis came back EMPTY (restarted without persistence, or flushed): the "
                    "configuration, waiting deliveries and records are gone; apply the targets "
                    "file again (`gateway targets apply FILE`) and give Redis persistence (AOF)"
                )
            return True
        return False

    def publish_env_names(
        self, worker: str, referenced: Iterable[str], environ: Mapping[str, str], ttl: int
    ) -> None:
        """A worker's report: which of the names the targets use (or `apply` asks about) it has."""
        asked = set(referenced) | {_text(n) for n in self.redis.smembers(self._k("env", "wanted"))}
        have = sorted(n for n in asked if environ.get(n))
        now = now_ms()
        key = self._k("env", "worker", worker)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={"have": _dumps(have), "asked": _dumps(sorted(asked)), "at": now})
            pipe.expire(key, ttl)
            pipe.zadd(self._k("env", "workers"), {worker: now})
            pipe.zremrangebyscore(self._k("env", "workers"), 0, now - ttl * 1000)
            pipe.execute()

    def ask_env_names(self, names: Iterable[str], seconds: int = 600) -> None:
        """Ask every live worker whether it has `names` (they answer within a few seconds)."""
        names = list(names)
        if names:
            with self.redis.pipeline(transaction=True) as pipe:
                pipe.sadd(self._k("env", "wanted"), *names)
                pipe.expire(self._k("env", "wanted"), seconds)
                pipe.execute()

    def worker_env_reports(self, ttl: int) -> dict[str, dict[str, Any]]:
        """Live workers' reports: name -> {have: set, asked: set, at: ms}."""
        since = now_ms() - ttl * 1000
        names = [_text(n) for n in self.redis.zrangebyscore(self._k("env", "workers"), since, "+inf")]
        out: dict[str, dict[str, Any]] = {}
        for name in names:
            raw = self.redis.hgetall(self._k("env", "worker", name))
            if raw:
                data = {_text(k): _text(v) for k, v in raw.items()}
                out[name] = {
                    "have": set(json.loads(data.get("have", "[]"))),
                    "asked": set(json.loads(data.get("asked", "[]"))),
                    "at": int(data.get("at", 0)),
                }
        return out


_log = logging.getLogger("gateway.store")
_SEEN_MARKER: set[tuple[str, str]] = set()  # (Redis identity, prefix) whose marker this process saw
_LOST_REPORTED: set[tuple[str, str]] = set()


def _redis_identity(client: Any, prefix: str) -> tuple[str, str]:
    kw = client.connection_pool.connection_kwargs
    return (f"{kw.get('host') or kw.get('path')}:{kw.get('port')}/{kw.get('db', 0)}", prefix)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def now_ms() -> int:
    return int(time.time() * 1000)


# -- the delivery queue: Lua, so that a batch is claimed or recorded in one round trip -----------
#
# Keys (all under the prefix):
#   due                  ZSET delivery id -> ms when it may be attempted. Waiting deliveries, and
#                        claimed ones with their lease expiry as score: a worker that dies holding
#                        one simply lets the lease run out, and the delivery is due again.
#   parked:{target}      ZSET deliveries held back: the target is paused, disabled or at its
#                        concurrency cap. Resuming moves them back to `due`.
#   held                 SET of paused or disabled targets
#   target:{name}        HASH health: state (active|paused|disabled), manual, reason, since,
#                        failures (consecutive), first_failure_at
#   inflight:{target}    ZSET deliveries being sent -> lease expiry (concurrency caps)
#   rate:{target}        theoretical arrival time (GCRA) of the target's next request slot
#   reserved             HASH delivery id -> its reserved rate slot
#   throttle:{target}    ms until which the target asked us to wait (429 Retry-After)
#   probes               HASH deliveries let through a paused target as its probe
#   probe-at:{target}    set while a probe interval runs
#   dead                 ZSET failed and expired deliveries -> ms (dead letters)
#   wake                 set while a drain job is queued (so a backlog is one job, not thousands)
#   workers:{name}       a live worker's heartbeat and the names of its environment variables

_LUA_RESUME = """
local function resume(p, t, now)
  local due = p .. ':due'
  redis.call('SREM', p .. ':held', t)
  redis.call('HSET', p .. ':target:' .. t, 'state', 'active', 'failures', 0, 'manual', '0',
    'since', now, 'reason', '')
  local pk = p .. ':parked:' .. t
  if redis.call('EXISTS', pk) == 1 then
    redis.call('ZUNIONSTORE', due, 2, due, pk, 'WEIGHTS', 1, 0, 'AGGREGATE', 'MIN')
    redis.call('DEL', pk)
  end
end
"""

_LUA_CLAIM = """
local p, now, lease, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local pol = cjson.decode(ARGV[5])
local version = redis.call('GET', p .. ':config:version') or '0'
if ARGV[6] ~= '' and ARGV[6] ~= version then
  -- The policies were built from another configuration version: claim nothing, reload, ask again.
  return {'stale', version}
end
local due, held = p .. ':due', p .. ':held'
local out = {'-1', version}
local n = 0
for _, did in ipairs(redis.call('ZRANGEBYSCORE', due, '-inf', now, 'LIMIT', 0, limit * 4)) do
  if n >= limit then break end
  local sep = string.find(did, '-', 1, true)
  if not sep then
    redis.call('ZREM', due, did)
  else
    local eid, t = string.sub(did, 1, sep - 1), string.sub(did, sep + 1)
    local tp = pol[t]
    local go, flag = true, ''
    if tp then
      local ik = p .. ':inflight:' .. t
      if redis.call('SISMEMBER', held, t) == 1 then
        if redis.call('HDEL', p .. ':probes', did) == 1 then
          flag = 'probe'
        else
          redis.call('ZREM', due, did)
          redis.call('ZADD', p .. ':parked:' .. t, now, did)
          go = false
        end
      end
      if go and tp.concurrency > 0 then
        redis.call('ZREMRANGEBYSCORE', ik, '-inf', now)
        if redis.call('ZCARD', ik) >= tp.concurrency then
          redis.call('ZREM', due, did)
          redis.call('ZADD', p .. ':parked:' .. t, now, did)
          go = false
        end
      end
      if go then
        local hold = tonumber(redis.call('GET', p .. ':throttle:' .. t) or '0')
        if hold > now then
          redis.call('ZADD', due, hold, did)
          go = false
        elseif tp.interval > 0 and redis.call('HDEL', p .. ':reserved', did) == 0 then
          local rk = p .. ':rate:' .. t
          local slot = math.max(tonumber(redis.call('GET', rk) or '0'), now)
          redis.call('SET', rk, string.format('%.3f', slot + tp.interval),
            'PX', math.floor(slot + tp.interval - now) + 1000)
          if slot > now then
            redis.call('ZADD', due, math.ceil(slot), did)
            redis.call('HSET', p .. ':reserved', did, math.ceil(slot))
            go = false
          end
        end
      end
      if go and tp.concurrency > 0 then
        redis.call('ZADD', ik, now + lease, did)
      end
    end
    if go then
      redis.call('ZADD', due, now + lease, did)
      local ek = p .. ':event:' .. eid
      out[#out + 1] = did
      out[#out + 1] = redis.call('GET', ek) or ''
      out[#out + 1] = redis.call('HGET', ek .. ':deliveries', t) or ''
      out[#out + 1] = flag
      n = n + 1
    end
  end
end
local nxt = redis.call('ZRANGEBYSCORE', due, '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
if nxt[2] then out[1] = nxt[2] end
-- More is due than this claim looked at (it looks at limit * 4; every one it looked at left the
-- due range: claimed, parked or rescheduled): due now, so the caller claims again.
if redis.call('ZCOUNT', due, '-inf', now) > 0 then out[1] = ARGV[2] end
return out
"""

_LUA_COMPLETE = (
    _LUA_RESUME
    + """
local p, now, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local due, held = p .. ':due', p .. ':held'
local changes = {}
local function opt(v) if v == '' then return nil end return v end
for i = 4, #ARGV - 12, 13 do
  -- 13 per record (DeliveryQueue.complete): d, t, e, c, pf, ps, a, s, due, park, dead, thr, h
  local r = {d = ARGV[i], t = ARGV[i + 1], e = ARGV[i + 2], c = tonumber(ARGV[i + 3]),
    pf = tonumber(ARGV[i + 4]), ps = tonumber(ARGV[i + 5]), a = opt(ARGV[i + 6]), s = opt(ARGV[i + 7]),
    due = opt(ARGV[i + 8]), park = opt(ARGV[i + 9]), dead = opt(ARGV[i + 10]),
    thr = tonumber(opt(ARGV[i + 11]) or ''), h = opt(ARGV[i + 12])}
  local ek = p .. ':event:' .. r.e
  if r.a then
    redis.call('RPUSH', ek .. ':attempts', r.a)
    redis.call('EXPIRE', ek .. ':attempts', ttl)
  end
  if r.s then
    redis.call('HSET', ek .. ':deliveries', r.t, r.s)
    redis.call('EXPIRE', ek .. ':deliveries', ttl)
  end
  if r.due then
    redis.call('ZADD', due, r.due, r.d)
  elseif r.park then
    redis.call('ZREM', due, r.d)
    redis.call('ZADD', p .. ':parked:' .. r.t, now, r.d)
  else
    redis.call('ZREM', due, r.d)
  end
  if r.dead then redis.call('ZADD', p .. ':dead', now, r.d) end
  if r.thr then
    redis.call('SET', p .. ':throttle:' .. r.t, r.thr, 'PX', math.max(1, r.thr - now))
  end
  if r.c > 0 then
    redis.call('ZREM', p .. ':inflight:' .. r.t, r.d)
    if redis.call('SISMEMBER', held, r.t) == 0 then
      local one = redis.call('ZPOPMIN', p .. ':parked:' .. r.t)
      if one[1] then redis.call('ZADD', due, now, one[1]) end
    end
  end
  if r.h then
    local hk = p .. ':target:' .. r.t
    local st = redis.call('HMGET', hk, 'state', 'failures', 'manual', 'first_failure_at')
    local state = st[1] or 'active'
    if r.h == 'ok' then
      if state == 'paused' and st[3] ~= '1' then
        resume(p, r.t, now)
        changes[#changes + 1] = r.t
        changes[#changes + 1] = 'resumed'
        changes[#changes + 1] = 'a probe succeeded'
      elseif st[2] and st[2] ~= '0' then
        redis.call('HSET', hk, 'failures', 0)
      end
    elseif r.h == 'fail' then
      local f = redis.call('HINCRBY', hk, 'failures', 1)
      local first = tonumber(st[4] or now)
      if f == 1 then
        first = now
        redis.call('HSET', hk, 'first_failure_at', now)
      end
      if state == 'active' and r.pf > 0 and f >= r.pf and now - first >= r.ps then
        local why = f .. ' consecutive failures in ' .. math.floor((now - first) / 1000) .. ' s'
        redis.call('SADD', held, r.t)
        redis.call('HSET', hk, 'state', 'paused', 'manual', '0', 'since', now, 'reason', why)
        changes[#changes + 1] = r.t
        changes[#changes + 1] = 'paused'
        changes[#changes + 1] = why
      end
    elseif r.h == 'gone' and state ~= 'disabled' then
      redis.call('SADD', held, r.t)
      redis.call('HSET', hk, 'state', 'disabled', 'manual', '0', 'since', now, 'reason', '410 Gone')
      changes[#changes + 1] = r.t
      changes[#changes + 1] = 'disabled'
      changes[#changes + 1] = 'the target answered 410 Gone'
    end
  end
end
return changes
"""
)

_LUA_RELEASE = """
local p, now = ARGV[1], tonumber(ARGV[2])
for i = 3, #ARGV do
  local did = ARGV[i]
  local sep = string.find(did, '-', 1, true)
  redis.call('ZADD', p .. ':due', now, did)
  if sep then redis.call('ZREM', p .. ':inflight:' .. string.sub(did, sep + 1), did) end
end
return #ARGV - 2
"""

_LUA_RESUME_TARGET = (
    _LUA_RESUME
    + """
local p, t, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local state = redis.call('HGET', p .. ':target:' .. t, 'state') or 'active'
resume(p, t, now)
return state
"""
)

_LUA_PROBE = """
local p, t, now, interval = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local hk = p .. ':target:' .. t
local st = redis.call('HMGET', hk, 'state', 'manual')
if st[1] ~= 'paused' or st[2] == '1' then return false end
if not redis.call('SET', p .. ':probe-at:' .. t, now, 'NX', 'PX', interval) then return false end
local one = redis.call('ZPOPMIN', p .. ':parked:' .. t)
if not one[1] then return false end
redis.call('HSET', p .. ':probes', one[1], now)
redis.call('ZADD', p .. ':due', now, one[1])
return one[1]
"""

_LUA_UNPARK = """
local p, t, now, cap = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
if redis.call('SISMEMBER', p .. ':held', t) == 1 then return 0 end
local ik, pk = p .. ':inflight:' .. t, p .. ':parked:' .. t
redis.call('ZREMRANGEBYSCORE', ik, '-inf', now)
local free = redis.call('ZCARD', pk)
if cap > 0 then free = math.min(free, cap - redis.call('ZCARD', ik)) end
local moved = 0
while moved < free do
  local one = redis.call('ZPOPMIN', pk)
  if not one[1] then break end
  redis.call('ZADD', p .. ':due', now, one[1])
  moved = moved + 1
end
return moved
"""

_LUA_REPLAY = """
local p, now, ttl, did, force = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], ARGV[5]
local sep = string.find(did, '-', 1, true)
if not sep then return 'unknown' end
local eid, t = string.sub(did, 1, sep - 1), string.sub(did, sep + 1)
local dk = p .. ':event:' .. eid .. ':deliveries'
local raw = redis.call('HGET', dk, t)
if not raw or redis.call('EXISTS', p .. ':event:' .. eid) == 0 then return 'unknown' end
if redis.call('ZSCORE', p .. ':due', did) then return 'pending' end
if redis.call('ZSCORE', p .. ':parked:' .. t, did) then return 'held' end
local st = cjson.decode(raw)
-- suppressed: held back by an abuse limit at ingest; a replay releases it
local final = {failed = true, expired = true, skipped = true, suppressed = true}
if st.status == 'delivered' and force ~= '1' then return 'delivered' end
if not final[st.status] and st.status ~= 'delivered' then return st.status end
st.status = 'pending'
st.retries = 0
st.throttles = 0
st.replays = (tonumber(st.replays) or 0) + 1
st.next_attempt_at = now
st.waiting = cjson.null
st.updated_at = now
redis.call('HSET', dk, t, cjson.encode(st))
redis.call('EXPIRE', dk, ttl)
redis.call('ZADD', p .. ':due', now, did)
redis.call('ZREM', p .. ':dead', did)
redis.call('ZREM', p .. ':suppressed', did)
return 'replayed'
"""

_LUA_ATTEMPT_NOW = """
local p, now, did = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local sep = string.find(did, '-', 1, true)
if not sep then return 'unknown' end
local eid, t = string.sub(did, 1, sep - 1), string.sub(did, sep + 1)
local raw = redis.call('HGET', p .. ':event:' .. eid .. ':deliveries', t)
if not raw then return 'unknown' end
if redis.call('ZSCORE', p .. ':parked:' .. t, did) then return 'held' end
local score = redis.call('ZSCORE', p .. ':due', did)
local st = cjson.decode(raw)
if not score then return st.status end
if redis.call('HEXISTS', p .. ':reserved', did) == 1 then return 'rate-limited' end
local nxt = tonumber(st.next_attempt_at)
if tonumber(score) <= now then return 'due' end
if nxt == nil or math.abs(tonumber(score) - nxt) > 1 then return 'in-flight' end
redis.call('ZADD', p .. ':due', now, did)
return 'scheduled'
"""


def _opt_number(value: Any) -> Any:
    return "" if value is None else value


_CLAIM_SCRIPT = Script(_LUA_CLAIM)
_COMPLETE_SCRIPT = Script(_LUA_COMPLETE)
_RELEASE_SCRIPT = Script(_LUA_RELEASE)


class DeliveryQueue:
    """The delivery queue's operations, for a sync (CLI, worker ticker) or asyncio (engine) client.

    Every method returns what redis-py returns: a value, or a coroutine for an asyncio client.
    """

    def __init__(
        self,
        client: Redis | aioredis.Redis,
        prefix: str,
        retention: int,
        scripts: FastRedis | ScriptsViaRedisPy | None = None,
        script_timeout: float = 10.0,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.retention = retention
        # The engine's three hot scripts (claim, complete, release) through the lean client when
        # one is given: redis.asyncio spends about 150 µs of CPU per call, FastRedis about 40.
        # Each call is bounded by `script_timeout` (FastRedis has no socket timeout of its own).
        self.scripts = scripts
        self.script_timeout = script_timeout
        self._claim = client.register_script(_LUA_CLAIM)
        self._complete = client.register_script(_LUA_COMPLETE)
        self._release = client.register_script(_LUA_RELEASE)
        self._resume = client.register_script(_LUA_RESUME_TARGET)
        self._probe = client.register_script(_LUA_PROBE)
        self._unpark = client.register_script(_LUA_UNPARK)
        self._replay = client.register_script(_LUA_REPLAY)
        self._attempt_now = client.register_script(_LUA_ATTEMPT_NOW)

    def _k(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def claim(
        self, now: int, lease_ms: int, limit: int, policies: dict[str, Any], version: int | None = None
    ) -> Any:
        """Claim up to `limit` due deliveries: [next_due_ms, config_version, (id, event, state, flag)*].

        `policies` come from configuration `version`: if that is not the stored version, nothing
        is claimed and the answer is ['stale', config_version] (reload, then claim again).
        """
        checked = "" if version is None else str(version)
        args: list[Any] = [self.prefix, now, lease_ms, limit, _dumps(policies), checked]
        if self.scripts is not None:
            return self._fast(_CLAIM_SCRIPT, args)
        return self._claim(args=args)

    def complete(self, now: int, records: list[dict[str, Any]]) -> Any:
        """Record a group of finished attempts; returns the targets' changes of state (flat).

        A record: d (delivery id), t (target), e (event id), c (the target's concurrency cap),
        pf, ps (its pause rule), then optional a (attempt JSON), s (state JSON), due (ms of the
        next attempt), park, dead (true), thr (ms the target asked to wait until), h (health:
        ok | fail | gone). Sent flat, 13 arguments each ("" for absent): JSON around the
        attempt's and state's own JSON would escape them all again.
        """
        args: list[Any] = [self.prefix, now, self.retention]
        for r in records:
            get = r.get
            args += (
                r["d"],
                r["t"],
                r["e"],
                r["c"],
                r["pf"],
                r["ps"],
                get("a") or "",
                get("s") or "",
                _opt_number(get("due")),
                "1" if get("park") else "",
                "1" if get("dead") else "",
                _opt_number(get("thr")),
                get("h") or "",
            )
        if self.scripts is not None:
            return self._fast(_COMPLETE_SCRIPT, args)
        return self._complete(args=args)

    def release(self, now: int, ids: Sequence[str]) -> Any:
        """Hand claimed deliveries back, due now (a worker stopping before it could send them)."""
        args: list[Any] = [self.prefix, now, *ids]
        if self.scripts is not None:
            return self._fast(_RELEASE_SCRIPT, args)
        return self._release(args=args)

    async def _fast(self, script: Script, args: list[Any]) -> Any:
        assert self.scripts is not None
        async with asyncio.timeout(self.script_timeout):
            return await self.scripts.evalsha(script, (), args)

    def clear_wake(self) -> Any:
        return self.client.delete(self._k("wake"))

    def set_wake(self) -> Any:
        return self.client.set(self._k("wake"), "1", nx=True, ex=WAKE_TTL)

    def alert_gate(self, what: str, seconds: int) -> Any:
        """True for the first caller in `seconds` (across processes): alerts are not a flood."""
        return self.client.set(self._k("alerted", what), "1", nx=True, ex=seconds)

    def write_alert(self, event: InvitationEvent, target: str) -> Any:
        """Store an alert as an event with one delivery, to the alert target."""
        pipe = self.client.pipeline(transaction=True)
        ek = self._k("event", event.id)
        pipe.set(ek, _dumps(event.to_dict()), ex=self.retention)
        pipe.hset(ek + ":deliveries", target, _dumps(Delivery(updated_at=event.received_at_ms).to_dict()))
        pipe.expire(ek + ":deliveries", self.retention)
        pipe.zadd(self._k("due"), {delivery_id(event.id, target): event.received_at_ms}, nx=True)
        pipe.zadd(self._k("events"), {event.id: event.received_at_ms})
        return pipe.execute()

    # -- sync: the worker's ticker and the CLI ---------------------------------------------------
    def _sync(self) -> Redis:
        assert isinstance(self.client, Redis), "a sync client is needed here"
        return self.client

    def _sync_script(self, script: Any, args: list[Any]) -> Any:
        self._sync()
        return script(args=args)

    def next_due(self) -> float | None:
        """The score of the earliest waiting delivery (ms), or None when nothing waits."""
        first = self._sync().zrange(self._k("due"), 0, 0, withscores=True)
        return float(first[0][1]) if first else None

    def probe(self, target: str, now: int, interval_ms: int) -> str | None:
        got = self._sync_script(self._probe, [self.prefix, target, now, interval_ms])
        return _text(got) if got else None

    def unpark(self, target: str, now: int, cap: int) -> int:
        return int(self._sync_script(self._unpark, [self.prefix, target, now, cap]))

    def held_targets(self) -> list[str]:
        return sorted(_text(m) for m in self._sync().smembers(self._k("held")))

    def parked_targets(self) -> list[str]:
        p = self._k("parked", "")
        return [_text(k)[len(p) :] for k in self._sync().scan_iter(match=p + "*", count=1000)]

    def trim_dead(self, now: int) -> None:
        self._sync().zremrangebyscore(self._k("dead"), "-inf", now - self.retention * 1000)

    def pause(self, target: str, now: int, reason: str = "paused by hand") -> str:
        hk = self._k("target", target)
        r = self._sync()
        before = _text(r.hget(hk, "state") or b"active")
        with r.pipeline(transaction=True) as pipe:
            pipe.sadd(self._k("held"), target)
            pipe.hset(hk, mapping={"state": "paused", "manual": "1", "since": now, "reason": reason})
            pipe.execute()
        return before

    def resume(self, target: str, now: int) -> str:
        """Resume a paused or disabled target; returns its state before."""
        return _text(self._sync_script(self._resume, [self.prefix, target, now]))

    def health(self, target: str) -> dict[str, Any]:
        r = self._sync()
        with r.pipeline(transaction=False) as pipe:
            pipe.hgetall(self._k("target", target))
            pipe.zcard(self._k("parked", target))
            pipe.zcard(self._k("inflight", target))
            raw, parked, inflight = pipe.execute()
        data = {_text(k): _text(v) for k, v in raw.items()}
        return {
            "state": data.get("state", "active"),
            "manual": data.get("manual") == "1",
            "reason": data.get("reason") or None,
            "since": int(float(data["since"])) if data.get("since") else None,
            "failures": int(data.get("failures", 0)),
            "held_deliveries": int(parked),
            "in_flight": int(inflight),
        }

    def replay(self, did: str, now: int, force: bool = False) -> str:
        split_delivery_id(did)
        return _text(
            self._sync_script(self._replay, [self.prefix, now, self.retention, did, "1" if force else "0"])
        )

    def attempt_now(self, did: str, now: int) -> str:
        split_delivery_id(did)
        return _text(self._sync_script(self._attempt_now, [self.prefix, now, did]))

    def dead_letters(self, since_ms: int | None = None, until_ms: int | None = None) -> list[tuple[str, int]]:
        """(delivery id, ms it failed) of every dead letter in the range, newest first."""
        rows = self._sync().zrevrangebyscore(
            self._k("dead"),
            until_ms if until_ms is not None else "+inf",
            since_ms if since_ms else "-inf",
            withscores=True,
        )
        return [(_text(row[0]), int(row[1])) for row in rows]

    def waiting_count(self) -> int:
        return int(self._sync().zcard(self._k("due")))


# -- the ingest's accept step ------------------------------------------------------------------

_LUA_INGEST = (
    """
local p, now, ttl, win, state = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local out = {'0', 0}
local holds = {}
-- Sorted-set entries are gathered and written once per key at the end (a command per batch,
-- not per event): most of the script's cost is per command, not per entry.
local dues, evs, nets, sup = {}, {}, {}, {}
local function add_all(cmd, key, flag, args)
  -- unpack is bounded by Lua's C stack (8,000): a drain of 500 events x 100 targets is not
  for j = 1, #args, 1000 do
    local last = math.min(j + 999, #args)
    if flag then
      redis.call(cmd, key, flag, unpack(args, j, last))
    else
      redis.call(cmd, key, unpack(args, j, last))
    end
  end
end
local indexed = {}
local function index(ms, id, n)
  -- the event's entries in the global index and its network's, written after the loop
  indexed[id] = true
  evs[#evs + 1] = ms
  evs[#evs + 1] = id
  local byn = nets[n]
  if not byn then
    byn = {}
    nets[n] = byn
  end
  byn[#byn + 1] = ms
  byn[#byn + 1] = id
end
for i = 6, #ARGV - 7, 8 do
  -- kind, id, event JSON, network, ms, targets (comma-separated), dedupe key, limits JSON or ''
  local id, n, ms = ARGV[i + 1], ARGV[i + 3], ARGV[i + 4]
  local ek = p .. ':event:' .. id
  local status = 'accepted'
  if ARGV[i] == 'a' then
    -- targets added by a configuration change during the accept: deliveries only
    for t in string.gmatch(ARGV[i + 5], '[^,]+') do
      if redis.call('HSETNX', ek .. ':deliveries', t, state) == 1 then
        dues[#dues + 1] = ms
        dues[#dues + 1] = id .. '-' .. t
      end
    end
    redis.call('EXPIRE', ek .. ':deliveries', ttl)
  elseif not redis.call('SET', ek, ARGV[i + 2], 'NX', 'EX', ttl) then
    -- Stored before: a spool drain, or a batch sent again after a timeout. A script stopped by
    -- an error keeps the writes it made, so the event may lack its deliveries or entries:
    -- complete them (deliveries still pending, or missing, are due; no others), never twice.
    -- (Deliveries are added only when the event has none at all: one with some, suppressed ones
    -- say, gets no new ones here.)
    status = 'exists'
    local dk = ek .. ':deliveries'
    local none = redis.call('EXISTS', dk) == 0
    for t in string.gmatch(ARGV[i + 5], '[^,]+') do
      local cur = not none and redis.call('HGET', dk, t)
      if none then
        redis.call('HSET', dk, t, state)
      end
      if none or cur == state then
        dues[#dues + 1] = ms
        dues[#dues + 1] = id .. '-' .. t
      end
    end
    if none and ARGV[i + 5] ~= '' then redis.call('EXPIRE', dk, ttl) end
    if not indexed[id] and not redis.call('ZSCORE', p .. ':events', id) then index(ms, id, n) end
  elseif win > 0 and not redis.call('SET', p .. ':dedupe:' .. ARGV[i + 6], id, 'NX', 'PX', win)
      and redis.call('GET', p .. ':dedupe:' .. ARGV[i + 6]) ~= id then
    -- (the same id: this very event, from a run cut short before it was stored)
    status = 'duplicate:' .. (redis.call('GET', p .. ':dedupe:' .. ARGV[i + 6]) or '')
    redis.call('DEL', ek)  -- stored by the SET NX above: a duplicate is not kept
    redis.call('HINCRBY', p .. ':counters', 'duplicates', 1)
  else
    -- abuse limits: a suppressed invitation is kept, visible and releasable, never delivered
    local why
    if ARGV[i + 7] ~= '' then
      local it = cjson.decode(ARGV[i + 7])
      why = it.sup
      if not why and it.g and redis.call('EXISTS', p .. ':' .. it.g.h) == 1 then
        why = redis.call('GET', p .. ':' .. it.g.h)
      end
      if not why and it.lim then
        for _, l in ipairs(it.lim) do
          if tonumber(redis.call('GET', p .. ':' .. l[1]) or '0') >= l[2] then
            why = l[4]
            break
          end
        end
      end
      if not why and it.lim then
        for _, l in ipairs(it.lim) do
          if redis.call('INCR', p .. ':' .. l[1]) == 1 then redis.call('PEXPIRE', p .. ':' .. l[1], l[3]) end
        end
      end
      if not why and it.g then
        local g = it.g
        local made = redis.call('INCR', p .. ':' .. g.c)
        if made == 1 then redis.call('PEXPIRE', p .. ':' .. g.c, g.ttl) end
        local took = tonumber(redis.call('GET', p .. ':' .. g.a) or '0')
        if made >= g.min and took / made <= g.ratio then
          local reason = g.why .. ': ' .. made .. ' invitations, ' .. took .. ' accepted'
          if redis.call('SET', p .. ':' .. g.h, reason, 'NX', 'EX', g.hold) then
            holds[#holds + 1] = 'held:' .. n .. ':' .. reason
          end
        end
      end
      if it.ga then
        local ak = p .. ':' .. it.ga[1]
        if redis.call('INCR', ak) == 1 then redis.call('PEXPIRE', ak, it.ga[2]) end
      end
    end
    local st, into = state, dues
    if why then
      status = 'suppressed:' .. why
      redis.call('HINCRBY', p .. ':counters', 'suppressed', 1)
      st = cjson.encode({status = 'suppressed', attempts = 0, retries = 0, throttles = 0,
        replays = 0, updated_at = now, waiting = why})
      into = sup
    end
    if ARGV[i + 5] ~= '' then
      local fields = {}
      for t in string.gmatch(ARGV[i + 5], '[^,]+') do
        fields[#fields + 1] = t
        fields[#fields + 1] = st
        into[#into + 1] = ms
        into[#into + 1] = id .. '-' .. t
      end
      add_all('HSET', ek .. ':deliveries', nil, fields)
      redis.call('EXPIRE', ek .. ':deliveries', ttl)
    end
    index(ms, id, n)
  end
  out[#out + 1] = status
end
local cutoff = now - ttl * 1000
for n, byn in pairs(nets) do
  local nk = p .. ':events:net:' .. n
  add_all('ZADD', nk, nil, byn)
  redis.call('ZREMRANGEBYSCORE', nk, '-inf', cutoff)
  redis.call('EXPIRE', nk, ttl)
end
if #evs > 0 then
  add_all('ZADD', p .. ':events', nil, evs)
  redis.call('EXPIRE', p .. ':events', ttl)
end
if #sup > 0 then
  add_all('ZADD', p .. ':suppressed', nil, sup)
end
-- The two global indexes lose what is past retention at most every 10 s, not at every batch:
-- at a few callbacks per batch, the batch's fixed commands cost Redis more than its events.
if #evs > 0 and redis.call('SET', p .. ':trimmed', '1', 'NX', 'EX', 10) then
  redis.call('ZREMRANGEBYSCORE', p .. ':events', '-inf', cutoff)
  redis.call('ZREMRANGEBYSCORE', p .. ':suppressed', '-inf', cutoff)
end
if #dues > 0 then
  add_all('ZADD', p .. ':due', 'NX', dues)
  if redis.call('SET', p .. ':wake', '1', 'NX', 'EX', """
    + str(WAKE_TTL)
    + """) then out[2] = 1 end
end
out[1] = redis.call('GET', p .. ':config:version') or '0'
for _, h in ipairs(holds) do out[#out + 1] = h end
return out
"""
)


def ingest_script() -> Script:
    """The accept step's Lua: store a batch of events and their deliveries in one call.

    ARGV: prefix, now ms, retention s, dedupe window ms (0: off), the pending delivery state
    JSON, then 8 per event: kind ("n" a new event, "a" deliveries to add to a
    stored one), id, the event's JSON (stored as it is), network, received ms, targets
    (comma-separated), dedupe key, and the limits as JSON or "" (`limit_fields`: sup, a reason
    to suppress it; lim, [[key, max, ttl ms, reason]]; g, the prefix guard {h, c, a keys, min,
    ratio, hold s, ttl ms, why}; ga, [key, ttl ms] to count an accepted invitation).
    Returns [config version, 1 if a drain job must be queued, status per event (accepted |
    duplicate:ID OF THE FIRST | exists | suppressed:REASON), then "held:NETWORK:REASON" per
    prefix just held]. An event that `exists` gets the deliveries (pending or missing ones due)
    and index entries that a run stopped by an error may have left out, and nothing else.
    """
    return _INGEST_SCRIPT


_INGEST_SCRIPT = Script(_LUA_INGEST)


def limit_fields(event: InvitationEvent, policy: NetworkPolicy, now_ms: int) -> dict[str, Any]:
    """The abuse-limit part of an event's item for the ingest Lua (key names live here).

    Limits and the prefix guard apply to created invitations (what sends an SMS); an accepted
    one only counts towards its prefix's accepted share. Windows are fixed buckets.
    """
    if not (policy.guard or policy.limits or policy.allowed_prefixes):
        return {}  # most networks: nothing to count
    net = event.network_id
    fields: dict[str, Any] = {}
    if event.type == INVITATION_ACCEPTED:
        if policy.guard is not None:
            g = policy.guard
            prefix = prefix_of(event.invitee, g.digits)
            bucket = now_ms // (g.window * 1000)
            fields["ga"] = [_limit_key("guard", net, prefix, "a", bucket), g.window * 2000]
        return fields
    if policy.allowed_prefixes and not prefix_allowed(event.invitee, policy.allowed_prefixes):
        fields["sup"] = f"invitee prefix not allowed for network {net}"
        return fields
    lims: dict[str, list[Any]] = {}
    for lim in policy.limits:
        value = {
            "invitee": event.invitee,
            "invitor": event.invitor,
            "prefix": prefix_of(event.invitee, lim.digits),
            "network": "",
        }[lim.per]
        window_ms = lim.window * 1000
        if lim.cooldown:
            # Sliding: the key lives `cooldown` from the invitation that let it be set.
            lims[_limit_key("cool", net, value)] = [_limit_key("cool", net, value), 1, window_ms, lim.reason]
            continue
        bucket = now_ms // window_ms
        ttl = window_ms - now_ms % window_ms + 60_000
        key = _limit_key("lim", net, lim.per, str(lim.window), value, bucket)
        # Two limits on the same thing over the same window count one counter: the lower max.
        if key not in lims or lims[key][1] > lim.max:
            lims[key] = [key, lim.max, ttl, lim.reason]
    if lims:
        fields["lim"] = list(lims.values())
    if policy.guard is not None:
        g = policy.guard
        prefix = prefix_of(event.invitee, g.digits)
        bucket = now_ms // (g.window * 1000)
        fields["g"] = {
            "h": _limit_key("hold", net, prefix),
            "c": _limit_key("guard", net, prefix, "c", bucket),
            "a": _limit_key("guard", net, prefix, "a", bucket),
            "min": g.min_created,
            "ratio": g.max_accepted_ratio,
            "hold": g.hold,
            "ttl": g.window * 2000,
            "why": f"prefix +{prefix} held: almost none of its invitations are accepted",
        }
    return fields


def _limit_key(kind: str, *parts: object) -> str:
    # Hashed: numbers are personal data and have no place in key names.
    digest = hashlib.sha256("\x00".join(map(str, parts)).encode()).hexdigest()[:24]
    return f"{kind}:{digest}"


# -- OAuth2 access tokens (gateway/delivery/oauth2.py) -------------------------------------------
#
#   {p}:oauth2:{digest}   the access token of one token endpoint and client id (digest: sha256 of
#                         both), expiring shortly before the token does; shared by every worker
_LUA_FORGET_IF_SAME = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class TokenCache:
    """Access tokens shared by every worker; for a sync or an asyncio client, like DeliveryQueue."""

    def __init__(self, client: Redis | aioredis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self._drop = client.register_script(_LUA_FORGET_IF_SAME)

    def key(self, token_url: str, client_id: str, scope: str) -> str:
        # Hashed: the URL may carry a tenant, and key names are listed by any Redis client.
        digest = hashlib.sha256("\x00".join((token_url, client_id, scope)).encode()).hexdigest()[:32]
        return f"{self.prefix}:oauth2:{digest}"

    def get(self, key: str) -> Any:
        return self.client.get(key)

    def put(self, key: str, token: str, ttl_ms: int) -> Any:
        return self.client.set(key, token, px=max(ttl_ms, 1))

    def drop(self, key: str, token: str) -> Any:
        """Forget `token`, unless another worker has already replaced it."""
        return self._drop(keys=[key], args=[token])


# -- lookups and test sends (gateway/delivery/lookups.py, gateway/delivery/testsend.py) -----------
#
#   {p}:lookup:{digest}      a lookup's values (JSON), for its `cache` seconds (digest: sha256 of
#                            the rendered request; it carries a phone number)
#   {p}:test:{id}            a test send asked for by `gateway targets test` (JSON), until a worker
#                            takes it or the asker stops waiting
#   {p}:test:{id}:result     what the worker saw (JSON), for TEST_RESULT_TTL seconds
TEST_RESULT_TTL = 600


def lookup_cache_key(prefix: str, digest: str) -> str:
    return f"{prefix}:lookup:{digest}"


def send_test_key(prefix: str, test_id: str) -> str:
    return f"{prefix}:test:{test_id}"


def send_test_result_key(prefix: str, test_id: str) -> str:
    return f"{prefix}:test:{test_id}:result"


def put_send_test(client: Redis, prefix: str, test_id: str, asked: dict[str, Any], ttl: int) -> None:
    """Store a test send request; it lapses after `ttl` seconds if no worker takes it."""
    client.set(send_test_key(prefix, test_id), _dumps(asked), ex=max(ttl, 1))


def take_send_test(client: Redis, prefix: str, test_id: str) -> dict[str, Any] | None:
    """The test send request, removed (None: lapsed, or taken by another worker)."""
    with client.pipeline(transaction=True) as pipe:
        pipe.get(send_test_key(prefix, test_id))
        pipe.delete(send_test_key(prefix, test_id))
        raw, _ = pipe.execute()
    return json.loads(raw) if raw else None


def put_send_test_result(client: Redis, prefix: str, test_id: str, result: dict[str, Any]) -> None:
    client.set(send_test_result_key(prefix, test_id), _dumps(result), ex=TEST_RESULT_TTL)


def get_send_test_result(client: Redis, prefix: str, test_id: str) -> dict[str, Any] | None:
    raw = client.get(send_test_result_key(prefix, test_id))
    return json.loads(raw) if raw else None


# -- operations: summed metrics, workers' heartbeats, the gauges a scrape reads -----------------------
#
#   metrics      HASH "name\x1flabel..." -> count: every process adds its counts once a second
#   heartbeats   ZSET worker (host:pid) -> ms its ticker last wrote


class OpsKeys:
    """What `/metrics` and `/readyz` read, and what processes write for them."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.metrics = f"{prefix}:metrics"
        self.heartbeats = f"{prefix}:heartbeats"
        self.due = f"{prefix}:due"
        self.dead = f"{prefix}:dead"
        self.held = f"{prefix}:held"

    def beat(self, pipe: Any, name: str, now: int) -> None:
        """Queue a worker's heartbeat (and forget workers silent for a day)."""
        pipe.zadd(self.heartbeats, {name: now})
        pipe.zremrangebyscore(self.heartbeats, "-inf", now - 86_400_000)

    def gone(self, pipe: Any, name: str) -> None:
        pipe.zrem(self.heartbeats, name)

    def read_alive(self, pipe: Any, now: int, window_ms: int) -> None:
        pipe.zcount(self.heartbeats, now - window_ms, "+inf")

    def read_gauges(self, pipe: Any, now: int, window_ms: int) -> None:
        """Queue, in order: metrics hash, due now, due later, dead letters, held targets, alive."""
        pipe.hgetall(self.metrics)
        pipe.zcount(self.due, "-inf", now)
        pipe.zcount(self.due, f"({now}", "+inf")
        pipe.zcard(self.dead)
        pipe.smembers(self.held)
        self.read_alive(pipe, now, window_ms)

    def read_held(self, pipe: Any, targets: Iterable[str]) -> None:
        """Queue, per target: its health state, its parked deliveries."""
        for target in targets:
            pipe.hget(f"{self.prefix}:target:{target}", "state")
            pipe.zcard(f"{self.prefix}:parked:{target}")
