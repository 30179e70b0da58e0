"""Events and configuration in Redis: the stored configuration, the read queries over events,
deliveries and attempts, their retention, the data marker and the workers' environment reports.

Events are written by the ingest script only (gateway/store/ingest.py); an attempt's record and
a delivery's state by the delivery queue's complete script (gateway/store/queue.py), or here by
`record_attempt`. Key names: gateway/store/keys.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis import Redis
from redis.client import Pipeline

from gateway.events import InvitationEvent
from gateway.networks import with_api_tokens
from gateway.records import Delivery, split_delivery_id
from gateway.store.codec import dumps, now_ms, text
from gateway.store.keys import Keys

# Named as before the store became a package: operators' log filters and alerts match it.
_log = logging.getLogger("gateway.store")


@dataclass(frozen=True, slots=True)
class Store:
    redis: Redis
    prefix: str = "gw"
    retention: int = 30 * 86400  # seconds
    keys: Keys = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", Keys(self.prefix))

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
        return {text(k): json.loads(v) for k, v in self.redis.hgetall(self.keys.config_api).items()}

    def save_api_target(self, target: dict[str, Any], replace: str | None = None) -> tuple[int, bool]:
        """Add or change an API-made target (validated by the caller) for every process.

        `replace`: the name of the API-made target this one replaces (a rename), or None.
        """
        return self._write_config(api_set=target, api_delete=replace)

    def delete_api_target(self, name: str) -> tuple[int, bool]:
        return self._write_config(api_delete=name)

    # Ingest tokens made through the admin API (gateway/admin/connect.py): only their digests, kept
    # beside the file's configuration and merged into it as API-made targets are, so that a new
    # one (or one removed) reaches every web process with the configuration's version.
    def api_tokens(self) -> dict[str, dict[str, Any]]:
        """Token id -> {network, digest, created_at, created_by}."""
        return {text(k): json.loads(v) for k, v in self.redis.hgetall(self.keys.config_tokens).items()}

    def save_api_token(self, token_id: str, record: dict[str, Any]) -> tuple[int, bool]:
        return self._write_config(token_set=(token_id, record))

    def delete_api_token(self, token_id: str) -> tuple[int, bool]:
        return self._write_config(token_delete=token_id)

    def _write_config(
        self,
        file_config: dict[str, Any] | None = None,
        api_set: dict[str, Any] | None = None,
        api_delete: str | None = None,
        token_set: tuple[str, dict[str, Any]] | None = None,
        token_delete: str | None = None,
    ) -> tuple[int, bool]:
        k = self.keys
        fk, ak, ck, dk, vk = k.config_file, k.config_api, k.config, k.config_digest, k.config_version
        tk = k.config_tokens

        def write(pipe: Pipeline) -> tuple[int, bool]:
            # WATCHed: a concurrent `targets apply` or API change makes this run again.
            if file_config is not None:
                file_part = file_config
            else:
                # Before the first API-made target, {p}:config is the file's configuration.
                blob = pipe.get(fk) or pipe.get(ck)
                file_part = json.loads(blob) if blob else {}
            api = {text(k): json.loads(v) for k, v in pipe.hgetall(ak).items()}
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
            tokens = {text(k): json.loads(v) for k, v in pipe.hgetall(tk).items()}
            if token_delete is not None:
                tokens.pop(token_delete, None)
            if token_set is not None:
                tokens[token_set[0]] = token_set[1]
            if tokens:
                merged["networks"] = with_api_tokens(file_part.get("networks") or {}, tokens.values())
            blob = dumps(merged)
            digest = hashlib.sha256(blob.encode()).hexdigest()
            changed = pipe.get(dk) != digest.encode()
            pipe.multi()
            pipe.set(fk, dumps(file_part))
            if api_delete is not None or shadowed:
                pipe.hdel(ak, *{*shadowed, *([api_delete] if api_delete is not None else [])})
            if api_set is not None and api_set["name"] not in declared:
                pipe.hset(ak, api_set["name"], dumps(api_set))
            if token_delete is not None:
                pipe.hdel(tk, token_delete)
            if token_set is not None:
                pipe.hset(tk, token_set[0], dumps(token_set[1]))
            pipe.set(k.marker, str(now_ms()), nx=True)  # (see redis_lost_data)
            if changed:
                pipe.set(ck, blob)
                pipe.set(dk, digest)
                pipe.incr(vk)
                pipe.publish(k.config_changed, "changed")  # web processes reload at once
            results = pipe.execute()
            return (int(results[-2]), True) if changed else (-1, False)

        version, changed = self.redis.transaction(  # type: ignore[misc]
            write,  # type: ignore[arg-type]
            fk,
            ak,
            ck,
            dk,
            tk,
            value_from_callable=True,
        )
        if not changed:
            return self.config_version(), False
        return int(version), True

    def load_config(self) -> tuple[int, dict[str, Any] | None]:
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.get(self.keys.config_version)
            pipe.get(self.keys.config)
            version, blob = pipe.execute()
        return int(version or 0), (json.loads(blob) if blob else None)

    def config_version(self) -> int:
        return int(self.redis.get(self.keys.config_version) or 0)

    # -- events -----------------------------------------------------------------------------
    def get_event(self, event_id: str) -> InvitationEvent | None:
        blob = self.redis.get(self.keys.event(event_id))
        return InvitationEvent.from_dict(json.loads(blob)) if blob else None

    def get_deliveries(self, event_id: str) -> dict[str, dict[str, Any]]:
        raw = self.redis.hgetall(self.keys.deliveries(event_id))
        return {text(k): json.loads(v) for k, v in raw.items()}

    def get_delivery(self, event_id: str, target: str) -> dict[str, Any] | None:
        raw = self.redis.hget(self.keys.deliveries(event_id), target)
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
                        pipe.get(self.keys.event(part[0]))
                        pipe.hget(self.keys.deliveries(part[0]), part[1])
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
        return [json.loads(a) for a in self.redis.lrange(self.keys.attempts(event_id), 0, -1)]

    def record_attempt(
        self, event_id: str, target: str, attempt: dict[str, Any], state: dict[str, Any]
    ) -> None:
        """Append an attempt and update the delivery's state, atomically."""
        ak, dk = self.keys.attempts(event_id), self.keys.deliveries(event_id)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.rpush(ak, dumps({"target": target, **attempt}))
            pipe.hset(dk, target, dumps(state))
            # Created here if the event's keys expired meanwhile: never keep them forever.
            pipe.expire(ak, self.retention)
            pipe.expire(dk, self.retention)
            pipe.execute()

    def recent_events(self, limit: int = 20, network: str | None = None, offset: int = 0) -> list[str]:
        """Event ids, newest first: `limit` of them after the `offset` newest."""
        if limit <= 0:
            return []
        index = self.keys.network_events(network) if network else self.keys.events
        return [text(m) for m in self.redis.zrevrange(index, offset, offset + limit - 1)]

    def events_with_deliveries(self, ids: Sequence[str]) -> list[tuple[InvitationEvent, dict[str, Any]]]:
        out = []
        for eid in ids:
            ev = self.get_event(eid)
            if ev is not None:
                out.append((ev, self.get_deliveries(eid)))
        return out

    # -- operations: the data marker, the workers' environment names -------------------------
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
        if self.redis.exists(self.keys.marker):
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
        """A worker's report: which of the names the targets use (or `apply` asks about) it has.

        Only names are ever written, never values.
        """
        asked = set(referenced) | {text(n) for n in self.redis.smembers(self.keys.env_wanted)}
        have = sorted(n for n in asked if environ.get(n))
        now = now_ms()
        key = self.keys.env_worker(worker)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={"have": dumps(have), "asked": dumps(sorted(asked)), "at": now})
            pipe.expire(key, ttl)
            pipe.zadd(self.keys.env_workers, {worker: now})
            pipe.zremrangebyscore(self.keys.env_workers, 0, now - ttl * 1000)
            pipe.execute()

    def ask_env_names(self, names: Iterable[str], seconds: int = 600) -> None:
        """Ask every live worker whether it has `names` (they answer within a few seconds)."""
        names = list(names)
        if names:
            with self.redis.pipeline(transaction=True) as pipe:
                pipe.sadd(self.keys.env_wanted, *names)
                pipe.expire(self.keys.env_wanted, seconds)
                pipe.execute()

    def worker_env_reports(self, ttl: int) -> dict[str, dict[str, Any]]:
        """Live workers' reports: name -> {have: set, asked: set, at: ms}."""
        since = now_ms() - ttl * 1000
        names = [text(n) for n in self.redis.zrangebyscore(self.keys.env_workers, since, "+inf")]
        out: dict[str, dict[str, Any]] = {}
        for name in names:
            raw = self.redis.hgetall(self.keys.env_worker(name))
            if raw:
                data = {text(k): text(v) for k, v in raw.items()}
                out[name] = {
                    "have": set(json.loads(data.get("have", "[]"))),
                    "asked": set(json.loads(data.get("asked", "[]"))),
                    "at": int(data.get("at", 0)),
                }
        return out


_SEEN_MARKER: set[tuple[str, str]] = set()  # (Redis identity, prefix) whose marker this process saw
_LOST_REPORTED: set[tuple[str, str]] = set()


def _redis_identity(client: Any, prefix: str) -> tuple[str, str]:
    kw = client.connection_pool.connection_kwargs
    return (f"{kw.get('host') or kw.get('path')}:{kw.get('port')}/{kw.get('db', 0)}", prefix)
