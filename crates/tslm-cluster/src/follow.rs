//! Following Redis: one PUB/SUB connection per shard feeds this node's mirrors, holes are healed
//! from the streams, and a housekeeping task writes subscriber counts, drops idle mirrors and
//! compares every mirror with Redis now and then.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;
use tslm_hub::{Appended, MirrorEntry};
use tslm_protocol::{ChannelName, Epoch, Offset};

use crate::codec::{self, Note};
use crate::shard::{Sink, node_topic, topic};
use crate::{COUNT_TTL, HOUSEKEEPING, Inner, OPENING_BYTES, READ_BATCH, READ_BYTES};

/// Channels subscribed per SUBSCRIBE command when a connection is (re)made.
const SUBSCRIBE_BATCH: usize = 512;

/// Follows shard `i` until `stop`: connects, subscribes to every mirrored channel it owns (and,
/// on the first shard, to this node's reply channel), heals every mirror (messages may have
/// been missed while the connection was down), then applies messages as they come. A ping
/// every probe interval notices a Redis that stopped answering; any failure reconnects with a
/// capped backoff, and readiness says so meanwhile.
pub(crate) async fn follow(inner: Arc<Inner>, i: usize, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(50);
    let prefix = inner.cfg.prefix.clone();
    let node_channel = node_topic(&prefix, inner.hub.node());
    loop {
        let shard = &inner.shards[i];
        let connect = async {
            let client = shard.client().await.map_err(|e| e.to_string())?;
            client.get_async_pubsub().await.map_err(|e| e.to_string())
        };
        let connected = tokio::select! {
            _ = stop.cancelled() => return,
            r = tokio::time::timeout(shard.timeout(), connect) => r,
        };
        let pubsub = match connected {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                tracing::warn!(shard = i, error = %e, "cluster: cannot follow Redis; retrying");
                if pause(&stop, &mut backoff).await {
                    return;
                }
                continue;
            }
            Err(_) => {
                tracing::warn!(
                    shard = i,
                    "cluster: Redis did not accept a PUB/SUB connection in time; retrying"
                );
                if pause(&stop, &mut backoff).await {
                    return;
                }
                continue;
            }
        };
        let (mut sink, mut stream) = pubsub.split();
        // Every mirrored channel, and those being opened (an open that subscribed on the
        // connection that just ended checks the generation and subscribes again).
        let mut names = inner.hub.channel_names();
        names.extend(
            inner
                .opening
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .keys()
                .cloned(),
        );
        names.sort();
        names.dedup();
        let mut topics: Vec<String> = names
            .into_iter()
            .filter(|n| inner.shard_index(n) == i)
            .map(|n| topic(&prefix, &n))
            .collect();
        if i == 0 {
            topics.push(node_channel.clone());
        }
        let mut ok = true;
        for chunk in topics.chunks(SUBSCRIBE_BATCH) {
            let sent = tokio::time::timeout(shard.timeout(), sink.subscribe(chunk)).await;
            if !matches!(sent, Ok(Ok(()))) {
                ok = false;
                break;
            }
        }
        if !ok {
            tracing::warn!(shard = i, "cluster: subscribing failed; retrying");
            if pause(&stop, &mut backoff).await {
                return;
            }
            continue;
        }
        shard.set_up(true, Some(Sink::Single(sink.clone())));
        tracing::info!(
            shard = i,
            channels = topics.len(),
            "cluster: following Redis"
        );
        // Whatever was published while this node was not listening (healed beside this loop,
        // so that messages keep flowing meanwhile).
        for name in inner.hub.channel_names() {
            if inner.shard_index(&name) == i {
                spawn_heal(&inner, &name);
            }
        }
        inner.tell_ready();
        backoff = Duration::from_millis(50);
        let mut probe = tokio::time::interval(inner.cfg.probe_interval);
        probe.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                m = stream.next() => match m {
                    Some(m) => {
                        // Every message already received goes with it (up to a bound): a run of
                        // one channel's messages is applied under one lock and each subscriber
                        // woken once for it.
                        let mut run = Run::default();
                        run.take(&inner, &node_channel, m.get_channel_name(), m.get_payload_bytes());
                        let mut ended = false;
                        while run.room() {
                            match futures_util::poll!(stream.next()) {
                                std::task::Poll::Ready(Some(m)) => run.take(
                                    &inner,
                                    &node_channel,
                                    m.get_channel_name(),
                                    m.get_payload_bytes(),
                                ),
                                std::task::Poll::Ready(None) => {
                                    ended = true;
                                    break;
                                }
                                std::task::Poll::Pending => break,
                            }
                        }
                        run.flush(&inner);
                        if ended {
                            tracing::warn!(shard = i, "cluster: the PUB/SUB connection to Redis closed; reconnecting");
                            break;
                        }
                    }
                    None => {
                        tracing::warn!(shard = i, "cluster: the PUB/SUB connection to Redis closed; reconnecting");
                        break;
                    }
                },
                _ = probe.tick() => {
                    let pong = tokio::time::timeout(shard.timeout(), sink.ping::<redis::Value>()).await;
                    if !matches!(pong, Ok(Ok(_))) {
                        tracing::warn!(shard = i, "cluster: Redis did not answer a ping on the PUB/SUB connection; reconnecting");
                        break;
                    }
                }
            }
        }
        shard.set_up(false, None);
        inner.tell_ready();
    }
}

/// Waits `backoff` (doubled up to 2 s for next time); `true` when stopped meanwhile.
async fn pause(stop: &CancellationToken, backoff: &mut Duration) -> bool {
    let wait = *backoff;
    *backoff = (*backoff * 2).min(Duration::from_secs(2));
    tokio::select! {
        _ = stop.cancelled() => true,
        _ = tokio::time::sleep(wait) => false,
    }
}

/// Most PUB/SUB messages taken at once from what the connection already received, and about
/// the most bytes of their data: a bound on what one batch pushes into a subscriber's outbox
/// (well under its default limits: 4,096 frames, 1 MiB) and on how long the follower runs
/// before other tasks do.
pub(crate) const DRAIN_MESSAGES: usize = 256;
pub(crate) const DRAIN_BYTES: usize = 256 * 1024;

/// PUB/SUB messages taken in a row: consecutive messages of one channel (one epoch) wait here
/// and are applied together ([`Hub::mirror_append_batch`]); anything else (another channel, a
/// deletion, a reply) applies what waits first, so the order of the connection is kept.
///
/// [`Hub::mirror_append_batch`]: tslm_hub::Hub::mirror_append_batch
#[derive(Default)]
pub(crate) struct Run {
    /// The channel and epoch of `entries`.
    of: Option<(ChannelName, Epoch)>,
    entries: Vec<MirrorEntry>,
    /// Messages taken (of any kind) and bytes of their data, against the bounds.
    taken: usize,
    bytes: usize,
}

impl Run {
    /// Whether more messages may be taken into this batch.
    pub(crate) fn room(&self) -> bool {
        self.taken < DRAIN_MESSAGES && self.bytes < DRAIN_BYTES
    }

    /// Takes one PUB/SUB message (`payload` on `channel`).
    pub(crate) fn take(
        &mut self,
        inner: &Arc<Inner>,
        node_channel: &str,
        channel: &str,
        payload: &[u8],
    ) {
        self.taken += 1;
        self.bytes += payload.len();
        if channel == node_channel {
            self.flush(inner);
            let Some(r) = codec::parse_reply(payload) else {
                tracing::debug!("cluster: malformed reply frame ignored");
                return;
            };
            let Ok(name) = ChannelName::new(&r.channel) else {
                return;
            };
            if let Err(e) = inner
                .hub
                .deliver_reply(r.conn, &name, r.offset, r.replier, &r.data)
            {
                tracing::debug!(error = %e, "cluster: a forwarded reply found no publisher");
            }
            return;
        }
        let Some(name) = channel_of(inner, channel) else {
            return;
        };
        match codec::parse_note(payload) {
            Some(Note::Deleted) => {
                self.flush(inner);
                inner.hub.mirror_close(&name, "deleted");
            }
            Some(Note::Message {
                epoch,
                offset,
                at_ms,
                route,
                data,
            }) => {
                let entry = MirrorEntry {
                    offset,
                    data,
                    age: Duration::from_millis(crate::now_ms().saturating_sub(at_ms)),
                    route,
                };
                let same = self
                    .of
                    .as_ref()
                    .is_some_and(|(n, e)| *n == name && *e == epoch);
                if !same {
                    self.flush(inner);
                    self.of = Some((name, epoch));
                }
                self.entries.push(entry);
            }
            None => tracing::debug!(channel = %name, "cluster: malformed message ignored"),
        }
    }

    /// Applies the messages waiting: into the buffer of the channel's open when one is under
    /// way (bounded: past it, the open heals the rest from the stream), else to its mirror.
    pub(crate) fn flush(&mut self, inner: &Arc<Inner>) {
        let Some((name, epoch)) = self.of.take() else {
            return;
        };
        let entries = std::mem::take(&mut self.entries);
        {
            let mut opening = inner.opening.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(o) = opening.get_mut(&name) {
                for entry in entries {
                    if o.bytes + entry.data.len() <= OPENING_BYTES {
                        o.bytes += entry.data.len();
                        o.buffer.push((epoch, entry));
                    } else {
                        o.overflowed = true;
                    }
                }
                return;
            }
        }
        apply_run(inner, &name, epoch, &entries);
    }
}

/// The channel whose PUB/SUB channel is `topic` (`<prefix>:{<channel>}`).
fn channel_of(inner: &Inner, topic: &str) -> Option<ChannelName> {
    topic
        .strip_prefix(inner.cfg.prefix.as_str())
        .and_then(|s| s.strip_prefix(":{"))
        .and_then(|s| s.strip_suffix('}'))
        .and_then(|s| ChannelName::new(s).ok())
}

/// Pushes waiting for the follower of a Redis Cluster. Bounded: when full, pushes are dropped
/// and counted, and the follower heals every mirror (a dropped message is then read from the
/// streams, like any message PUB/SUB lost).
const PUSH_QUEUE: usize = 8192;

/// The push sender given to the cluster connection: never blocks it (see [`PUSH_QUEUE`]).
struct Pushes {
    tx: tokio::sync::mpsc::Sender<redis::PushInfo>,
    overflow: Arc<AtomicBool>,
    dropped: Arc<AtomicU64>,
}

impl redis::aio::AsyncPushSender for Pushes {
    fn send(&self, info: redis::PushInfo) -> Result<(), redis::aio::SendError> {
        match self.tx.try_send(info) {
            Ok(()) => Ok(()),
            Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                self.overflow.store(true, Ordering::SeqCst);
                self.dropped.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => Err(redis::aio::SendError),
        }
    }
}

/// Channels subscribed at once when a Redis Cluster connection is (re)made: one `SSUBSCRIBE`
/// per channel, since one naming several must stay in one slot.
const SSUBSCRIBE_AT_ONCE: usize = 64;

/// Follows a Redis Cluster until `stop`, like [`follow`] follows one Redis: a RESP3 cluster
/// connection `SSUBSCRIBE`s every mirrored channel on the master of its slot (and this node's
/// reply channel), every mirror is healed, then messages are applied as they come.
///
/// Any disconnection of any master (a `Disconnection` push), a subscription the server ended
/// (`sunsubscribe`: its slot moved), a ping to the masters unanswered or dropped pushes: the
/// whole connection is made again, subscribed again and every mirror healed. redis-rs would
/// resubscribe a reconnected node by itself, but with one `SSUBSCRIBE` naming channels of
/// several slots, which Redis refuses (`CROSSSLOT`); making the connection again also follows
/// a failover or a slot migration without relying on it.
pub(crate) async fn follow_cluster(inner: Arc<Inner>, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(50);
    let prefix = inner.cfg.prefix.clone();
    let shard = &inner.shards[0];
    let node_channel = shard.node_topic(&prefix, inner.hub.node());
    let dropped = Arc::new(AtomicU64::new(0));
    loop {
        let (tx, mut rx) = tokio::sync::mpsc::channel(PUSH_QUEUE);
        let overflow = Arc::new(AtomicBool::new(false));
        let pushes = Pushes {
            tx,
            overflow: Arc::clone(&overflow),
            dropped: Arc::clone(&dropped),
        };
        let connected = tokio::select! {
            _ = stop.cancelled() => return,
            r = shard.cluster_pubsub(&inner.cfg.redis_cluster, &inner.cfg, pushes) => r,
        };
        let conn = match connected {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cluster: cannot follow the Redis Cluster; retrying");
                if pause(&stop, &mut backoff).await {
                    return;
                }
                continue;
            }
        };
        let mut names = inner.hub.channel_names();
        names.extend(
            inner
                .opening
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .keys()
                .cloned(),
        );
        names.sort();
        names.dedup();
        let mut topics: Vec<String> = names.into_iter().map(|n| topic(&prefix, &n)).collect();
        topics.push(node_channel.clone());
        let subscribed = futures_util::stream::iter(topics.iter().cloned())
            .map(|t| {
                let mut c = conn.clone();
                async move { tokio::time::timeout(shard.timeout(), c.ssubscribe(t)).await }
            })
            .buffer_unordered(SSUBSCRIBE_AT_ONCE)
            .all(|r| std::future::ready(matches!(r, Ok(Ok(())))));
        let ok = tokio::select! {
            _ = stop.cancelled() => return,
            ok = subscribed => ok,
        };
        if !ok {
            tracing::warn!("cluster: subscribing on the Redis Cluster failed; retrying");
            if pause(&stop, &mut backoff).await {
                return;
            }
            continue;
        }
        shard.set_up(true, Some(Sink::Cluster(conn.clone())));
        tracing::info!(
            channels = topics.len(),
            "cluster: following the Redis Cluster"
        );
        heal_all(&inner);
        inner.tell_ready();
        backoff = Duration::from_millis(50);
        let mut probe = tokio::time::interval(inner.cfg.probe_interval);
        probe.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                m = rx.recv() => {
                    let Some(m) = m else {
                        tracing::warn!("cluster: the Redis Cluster connection ended; reconnecting");
                        break;
                    };
                    // Every push already queued goes with it (up to a bound), as in `follow`.
                    let mut run = Run::default();
                    let mut go_on = on_push(&inner, &node_channel, m, &mut run);
                    for _ in 1..DRAIN_MESSAGES {
                        if !go_on || !run.room() {
                            break;
                        }
                        match rx.try_recv() {
                            Ok(m) => go_on = on_push(&inner, &node_channel, m, &mut run),
                            Err(_) => break,
                        }
                    }
                    run.flush(&inner);
                    if !go_on {
                        break;
                    }
                },
                _ = probe.tick() => {
                    let mut c = conn.clone();
                    let ping = redis::cmd("PING");
                    let all = redis::cluster_routing::RoutingInfo::MultiNode((
                        redis::cluster_routing::MultipleNodeRoutingInfo::AllMasters,
                        Some(redis::cluster_routing::ResponsePolicy::AllSucceeded),
                    ));
                    let pong = tokio::time::timeout(shard.timeout(), c.route_command(ping, all)).await;
                    if !matches!(pong, Ok(Ok(_))) {
                        tracing::warn!("cluster: a Redis Cluster master did not answer a ping; reconnecting");
                        break;
                    }
                }
            }
            if overflow.swap(false, Ordering::SeqCst) {
                tracing::warn!(
                    dropped_total = dropped.load(Ordering::Relaxed),
                    "cluster: Redis Cluster pushes dropped (queue full); healing every mirror"
                );
                heal_all(&inner);
            }
        }
        shard.set_up(false, None);
        inner.tell_ready();
        drop(conn);
        if pause(&stop, &mut backoff).await {
            return;
        }
    }
}

/// One push of the Redis Cluster connection (a message joins `run`, see [`Run`]); `false` when
/// the connection must be made again.
fn on_push(inner: &Arc<Inner>, node_channel: &str, m: redis::PushInfo, run: &mut Run) -> bool {
    use redis::PushKind;
    // Borrowed: a message's payload is not copied before it is decoded.
    fn text(v: Option<&redis::Value>) -> Option<&[u8]> {
        match v? {
            redis::Value::BulkString(b) => Some(b.as_slice()),
            redis::Value::SimpleString(s) => Some(s.as_bytes()),
            _ => None,
        }
    }
    match m.kind {
        PushKind::Disconnection => {
            run.flush(inner);
            tracing::warn!("cluster: a Redis Cluster connection closed; reconnecting");
            false
        }
        PushKind::SMessage | PushKind::Message => {
            let (Some(channel), Some(payload)) = (text(m.data.first()), text(m.data.get(1))) else {
                return true;
            };
            let channel = String::from_utf8_lossy(channel);
            run.take(inner, node_channel, &channel, payload);
            true
        }
        PushKind::SUnsubscribe => {
            run.flush(inner);
            // Ours (an idle mirror dropped) or the server's (the slot moved to another master).
            let Some(channel) = text(m.data.first()) else {
                return true;
            };
            let channel = String::from_utf8_lossy(channel);
            let ours = channel != node_channel
                && channel_of(inner, &channel).is_none_or(|n| inner.hub.mirror_head(&n).is_none());
            if !ours {
                tracing::info!(%channel, "cluster: Redis Cluster ended a subscription (slot moved); reconnecting");
            }
            ours
        }
        _ => true,
    }
}

/// Heals every mirror of this node (beside the follower).
fn heal_all(inner: &Arc<Inner>) {
    for name in inner.hub.channel_names() {
        spawn_heal(inner, &name);
    }
}

/// Applies one message to the mirror of `name`; heals it (beside the caller) when messages are
/// missing before it or the epoch differs.
pub(crate) fn apply(inner: &Arc<Inner>, name: &ChannelName, epoch: Epoch, entry: MirrorEntry) {
    apply_run(inner, name, epoch, std::slice::from_ref(&entry));
}

/// Applies messages of `name` (oldest first) to its mirror in one batch; heals it (beside the
/// caller) when messages are missing before one of them or the epoch differs.
pub(crate) fn apply_run(
    inner: &Arc<Inner>,
    name: &ChannelName,
    epoch: Epoch,
    entries: &[MirrorEntry],
) {
    if entries.is_empty() {
        return;
    }
    match inner.hub.mirror_append_batch(name, epoch, entries).1 {
        Appended::Applied | Appended::Stale | Appended::Missing => {}
        Appended::Ahead { .. } | Appended::OtherEpoch { .. } => spawn_heal(inner, name),
    }
}

/// Heals `name` in a task of its own: one heal per channel at a time (a request that comes
/// while one runs makes it run once more), at most a few channels at once.
pub(crate) fn spawn_heal(inner: &Arc<Inner>, name: &ChannelName) {
    {
        let mut healing = inner.healing.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(again) = healing.get_mut(name) {
            *again = true;
            return;
        }
        healing.insert(name.clone(), false);
    }
    let (inner, name) = (Arc::clone(inner), name.clone());
    tokio::spawn(async move {
        loop {
            if let Ok(_permit) = inner.heals.acquire().await {
                heal(&inner, &name).await;
            }
            let mut healing = inner.healing.lock().unwrap_or_else(|p| p.into_inner());
            match healing.get_mut(&name) {
                Some(again) if *again => *again = false,
                _ => {
                    healing.remove(&name);
                    return;
                }
            }
        }
    });
}

/// Brings the mirror of `name` up to Redis's head: reads what follows its newest offset and
/// applies it; messages Redis no longer has are announced as one `gap`; a different epoch in
/// Redis (its log restarted) ends the mirror's subscriptions with `closed` `epoch_changed`, a
/// channel gone from Redis with `closed` `deleted`. When Redis does not answer, the mirror stays
/// as it is (the next reconnect or sync heals it).
pub(crate) async fn heal(inner: &Inner, name: &ChannelName) {
    let shard = inner.shard(name);
    let meta = match shard.meta(&inner.cfg, name).await {
        Ok(m) => m,
        Err(crate::shard::StoreError::Refused(code, _)) if code == "NOTFOUND" => {
            inner.hub.mirror_close(name, "deleted");
            return;
        }
        Err(e) => {
            tracing::debug!(channel = %name, error = %e, "cluster: heal postponed");
            return;
        }
    };
    for _ in 0..1000 {
        let Some((epoch, last)) = inner.hub.mirror_head(name) else {
            return;
        };
        if meta.epoch != epoch {
            tracing::info!(channel = %name, old = %epoch, new = %meta.epoch, "cluster: the channel's log restarted in Redis");
            inner.hub.mirror_close(name, "epoch_changed");
            return;
        }
        if last.0 >= meta.head {
            return;
        }
        let entries = match shard
            .entries_after(&inner.cfg.prefix, name, last, READ_BATCH, READ_BYTES)
            .await
        {
            Ok(e) => e,
            Err(e) => {
                tracing::debug!(channel = %name, error = %e, "cluster: heal postponed");
                return;
            }
        };
        match entries.first().map(|e| e.offset.0) {
            Some(f) if f > last.0 + 1 => {
                inner.hub.mirror_skip(name, epoch, Offset(f - 1));
            }
            None => {
                inner.hub.mirror_skip(name, epoch, Offset(meta.head));
                return;
            }
            _ => {}
        }
        let upto = entries.partition_point(|e| e.offset.0 <= meta.head);
        inner.hub.mirror_append_batch(name, epoch, &entries[..upto]);
    }
}

/// Unsubscribes from `name`'s PUB/SUB channel unless a mirror or an open needs it (checked
/// again after the unsubscribe, which may have raced an open's subscribe).
pub(crate) async fn unsubscribe_unless_used(inner: &Inner, name: &ChannelName) {
    let used = |inner: &Inner| {
        inner.hub.mirror_head(name).is_some()
            || inner
                .opening
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(name)
    };
    if used(inner) {
        return;
    }
    let shard = inner.shard(name);
    shard.unsubscribe(&inner.cfg.prefix, name).await;
    if used(inner) {
        let _ = shard.subscribe(&inner.cfg.prefix, name).await;
    }
}

/// Every few seconds: writes this node's subscriber counts, drops mirrors nobody here has read
/// for two rounds, and (every sync interval) compares each mirror's head with Redis's.
pub(crate) async fn housekeeping(inner: Arc<Inner>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(HOUSEKEEPING);
    let mut last_sync = tokio::time::Instant::now();
    let prefix = inner.cfg.prefix.clone();
    let node = inner.hub.node();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let names = inner.hub.channel_names();
        let mut idle_now = Vec::new();
        for (i, shard) in inner.shards.iter().enumerate() {
            let mine: Vec<(ChannelName, usize)> = names
                .iter()
                .filter(|n| inner.shard_index(n) == i)
                .filter_map(|n| Some((n.clone(), inner.hub.subscriber_count(n).ok()?)))
                .collect();
            if let Err(e) = shard.counts(&prefix, node, &mine, COUNT_TTL).await {
                tracing::debug!(shard = i, error = %e, "cluster: subscriber counts not written");
            }
            idle_now.extend(mine.into_iter().filter(|(_, n)| *n == 0).map(|(c, _)| c));
        }
        let idle_now: std::collections::HashSet<ChannelName> = idle_now.into_iter().collect();
        let was_idle = std::mem::replace(
            &mut *inner.idle.lock().unwrap_or_else(|p| p.into_inner()),
            idle_now.clone(),
        );
        for name in was_idle.iter().filter(|n| idle_now.contains(*n)) {
            if inner.hub.mirror_drop_idle(name) {
                unsubscribe_unless_used(&inner, name).await;
            }
        }
        match inner.shards[0]
            .renew_node(&prefix, node, &inner.node_token)
            .await
        {
            Ok(true) => {}
            Ok(false) => tracing::error!(
                node,
                "cluster: another gateway holds this node's number; replies to this node's publishers may go astray: restart this gateway"
            ),
            Err(e) => tracing::debug!(error = %e, "cluster: node lease not renewed"),
        }
        if last_sync.elapsed() >= inner.cfg.sync_interval {
            last_sync = tokio::time::Instant::now();
            sync(&inner, &names).await;
        }
    }
}

/// Compares every mirror's epoch and head with Redis's and heals those behind.
async fn sync(inner: &Arc<Inner>, names: &[ChannelName]) {
    for (i, shard) in inner.shards.iter().enumerate() {
        let mine: Vec<ChannelName> = names
            .iter()
            .filter(|n| inner.shard_index(n) == i)
            .cloned()
            .collect();
        for chunk in mine.chunks(SUBSCRIBE_BATCH) {
            let Ok(heads) = shard.heads(&inner.cfg.prefix, chunk).await else {
                // This shard does not answer; the others are still compared.
                break;
            };
            for (name, head) in chunk.iter().zip(heads) {
                let local = inner.hub.mirror_head(name);
                if local.is_some() && local != head {
                    spawn_heal(inner, name);
                }
            }
        }
    }
}
