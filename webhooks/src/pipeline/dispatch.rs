//! The dispatcher: an async task on the pipeline's runtime that queues the events it is
//! given per endpoint and token, starts attempts up to each endpoint's concurrency, handles
//! their outcomes (delivered, retried later, given up as a dead letter, endpoint disabled on
//! 410), keeps the webhooks current with the engine's services, and hands the resolved
//! events to the writer in rounds.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::Sender;
use tokio::sync::mpsc;
use zoftoken_engine::Engine;
use zoftoken_storage::webhooks::{event_id, set_bit};
use zoftoken_storage::{DeadLetterRecord, DeliveryWrite, DisabledEndpoint};

use crate::http::{self, Attempt, HttpClient, Signed};
use crate::pipeline::hook::{fingerprint, Hook};
use crate::pipeline::queue::{Endpoint, Item};
use crate::pipeline::retry::retry_delay;
use crate::pipeline::writer::WriterMsg;
use crate::pipeline::{now_ms, Msg, Shared};
use crate::{sign, PipelineConfig};

/// A retry due: `(when, serial, service, token)`.
type Timer = (Instant, u64, Arc<str>, [u8; 16]);

/// The dispatcher's state (owned by its task).
pub(super) struct Dispatcher {
    cfg: PipelineConfig,
    shared: Arc<Shared>,
    engine: Arc<Engine>,
    tx: mpsc::UnboundedSender<Msg>,
    writer: Option<Sender<WriterMsg>>,
    /// Commits in memory: resolved bitmap and events left.
    commits: HashMap<u64, (Vec<u8>, u32)>,
    endpoints: HashMap<Arc<str>, Endpoint>,
    timers: BinaryHeap<Reverse<Timer>>,
    timer_serial: u64,
    hooks: HashMap<Arc<str>, Arc<Hook>>,
    disabled: HashMap<String, DisabledEndpoint>,
    clients: HashMap<Option<String>, HttpClient>,
    /// The last client error logged per service (logged again only when it changes).
    client_errors: HashMap<Arc<str>, String>,
    pending: DeliveryWrite,
    finished: Vec<u64>,
    replays_done: Vec<(u64, u16)>,
    dirty: HashSet<u64>,
    pending_since: Option<Instant>,
    pending_count: usize,
    /// `(time, seq, index)` of every event in memory: the oldest undelivered one.
    undelivered: BTreeSet<(u64, u64, u16)>,
    rng: u64,
    touched: HashSet<Arc<str>>,
}

/// Acknowledge at once beyond this many resolved events.
const ACK_BATCH: usize = 8192;

impl Dispatcher {
    /// A dispatcher with nothing in memory; `disabled` are the endpoints the store lists as
    /// disabled, `seed` seeds the jitter.
    pub fn new(
        cfg: PipelineConfig,
        shared: Arc<Shared>,
        engine: Arc<Engine>,
        tx: mpsc::UnboundedSender<Msg>,
        writer: Sender<WriterMsg>,
        disabled: HashMap<String, DisabledEndpoint>,
        seed: u64,
    ) -> Dispatcher {
        Dispatcher {
            cfg,
            shared,
            engine,
            tx,
            writer: Some(writer),
            commits: HashMap::new(),
            endpoints: HashMap::new(),
            timers: BinaryHeap::new(),
            timer_serial: 0,
            hooks: HashMap::new(),
            disabled,
            clients: HashMap::new(),
            client_errors: HashMap::new(),
            pending: DeliveryWrite::new(),
            finished: Vec::new(),
            replays_done: Vec::new(),
            dirty: HashSet::new(),
            pending_since: None,
            pending_count: 0,
            undelivered: BTreeSet::new(),
            rng: seed,
            touched: HashSet::new(),
        }
    }

    /// Runs until the pipeline stops, then hands the last round to the writer.
    pub async fn run(&mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        self.refresh();
        let mut next_refresh = Instant::now() + self.cfg.poll_interval;
        loop {
            let mut deadline = next_refresh;
            if let Some(Reverse((t, ..))) = self.timers.peek() {
                deadline = deadline.min(*t);
            }
            if let Some(s) = self.pending_since {
                deadline = deadline.min(s + self.cfg.ack_interval);
            }
            tokio::select! {
                biased;
                _ = self.shared.stop_dispatcher.notified() => break,
                m = rx.recv() => match m {
                    Some(m) => {
                        self.handle(m);
                        for _ in 0..4096 {
                            match rx.try_recv() {
                                Ok(m) => self.handle(m),
                                Err(_) => break,
                            }
                        }
                    }
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline.into()) => {}
            }
            let now = Instant::now();
            while let Some(Reverse((t, ..))) = self.timers.peek() {
                if *t > now {
                    break;
                }
                if let Some(Reverse((_, _, service, token))) = self.timers.pop() {
                    if let Some(ep) = self.endpoints.get_mut(&service) {
                        if let Some(q) = ep.tokens.get_mut(&token) {
                            q.busy = false;
                            ep.ready.push_back(token);
                        }
                    }
                    self.touched.insert(service);
                }
            }
            if now >= next_refresh {
                self.refresh();
                next_refresh = now + self.cfg.poll_interval;
            }
            // While the gate is closed (the delivery lease not renewed in time) no attempt
            // starts; the endpoints stay touched for when it opens again.
            if self.shared.gate.is_open() {
                let touched: Vec<Arc<str>> = self.touched.drain().collect();
                for s in touched {
                    self.pump(&s);
                }
            }
            if self
                .pending_since
                .is_some_and(|s| s.elapsed() >= self.cfg.ack_interval)
                || self.pending_count >= ACK_BATCH
            {
                self.flush();
            }
        }
        self.flush();
        self.writer = None;
    }

    fn refresh(&mut self) {
        let mut hooks = HashMap::new();
        for c in self.engine.service_configs() {
            let Some(w) = c.webhook else { continue };
            let fp = fingerprint(&w);
            let name: Arc<str> = Arc::from(c.name.as_str());
            // Kept while unchanged; a client that could not be built (CA file) is tried again.
            if let Some(h) = self
                .hooks
                .get(&name)
                .filter(|h| h.fingerprint == fp && h.client.is_ok())
            {
                hooks.insert(name, h.clone());
                continue;
            }
            let client = match self.clients.get(&w.ca_file) {
                Some(c) => Ok(c.clone()),
                None => match http::client(w.ca_file.as_deref(), self.cfg.concurrency_per_endpoint)
                {
                    Ok(c) => {
                        self.clients.insert(w.ca_file.clone(), c.clone());
                        Ok(c)
                    }
                    Err(e) => Err(crate::error_text(&e)),
                },
            };
            // An unusable CA file fails this service's deliveries (retried, then dead
            // letters), counted and logged once per change; it never stops the server.
            match &client {
                Err(e) if self.client_errors.get(&name) != Some(e) => {
                    metrics::counter!("zoftoken_webhook_config_errors_total").increment(1);
                    tracing::warn!(service = %name, error = %e, "webhooks: a service's webhook cannot be used");
                    self.client_errors.insert(name.clone(), e.clone());
                }
                Err(_) => {}
                Ok(_) => {
                    self.client_errors.remove(&name);
                }
            }
            let hook = Hook::new(&w, fp, client);
            hooks.insert(name, Arc::new(hook));
        }
        // A changed configuration re-enables a disabled endpoint.
        let changed: Vec<String> = self
            .disabled
            .iter()
            .filter(|(s, d)| {
                hooks
                    .get(s.as_str())
                    .is_some_and(|h| h.fingerprint != d.fingerprint)
            })
            .map(|(s, _)| s.clone())
            .collect();
        for s in changed {
            self.disabled.remove(&s);
            self.pending.enable(&s);
            self.note_pending(0);
        }
        self.hooks = hooks;
        self.export_gauges();
    }

    fn export_gauges(&self) {
        metrics::gauge!("zoftoken_webhook_queue_depth")
            .set(self.shared.in_memory.load(Ordering::Relaxed) as f64);
        let oldest = self
            .undelivered
            .first()
            .map_or(0.0, |(t, ..)| now_ms().saturating_sub(*t) as f64 / 1000.0);
        metrics::gauge!("zoftoken_webhook_oldest_undelivered_seconds").set(oldest);
    }

    fn handle(&mut self, m: Msg) {
        match m {
            Msg::Commits(list) => {
                for c in list {
                    let n = c.events.len() as u32;
                    if n == 0 {
                        self.pending.finished(c.seq);
                        self.finished.push(c.seq);
                        self.note_pending(1);
                        continue;
                    }
                    self.commits.insert(c.seq, (c.resolved, n));
                    for ev in c.events {
                        self.enqueue(Item::new(ev, false));
                    }
                }
            }
            Msg::Replays(list) => {
                for r in list {
                    // The replay re-enabled the endpoint in the store.
                    self.disabled.remove(&r.event.service);
                    self.enqueue(Item::new(r.event, true));
                }
            }
            Msg::Done {
                service,
                token,
                attempt,
            } => self.done(service, token, attempt),
        }
    }

    fn enqueue(&mut self, item: Item) {
        self.undelivered.insert(item.order());
        let hook = self.hooks.get(item.ev.service.as_str()).cloned();
        match hook {
            None => self.resolve(item, false),
            Some(h) if !h.wants(item.ev.kind) => self.resolve(item, false),
            Some(_) if self.disabled.contains_key(&item.ev.service) => {
                self.dead(item, Some(410), "endpoint disabled (HTTP 410)".into())
            }
            Some(_) => {
                let name = match self.endpoints.get_key_value(item.ev.service.as_str()) {
                    Some((k, _)) => k.clone(),
                    None => {
                        let k: Arc<str> = Arc::from(item.ev.service.as_str());
                        self.endpoints.insert(k.clone(), Endpoint::default());
                        k
                    }
                };
                let token = item.ev.token_id.0;
                let Some(ep) = self.endpoints.get_mut(&name) else {
                    return;
                };
                let q = ep.tokens.entry(token).or_default();
                let start = usize::from(q.busy).min(q.items.len());
                let key = item.queue_order();
                let at = q
                    .items
                    .iter()
                    .skip(start)
                    .position(|i| i.queue_order() > key)
                    .map_or(q.items.len(), |p| p + start);
                let was_empty = q.items.is_empty();
                q.items.insert(at, item);
                if was_empty && !q.busy {
                    ep.ready.push_back(token);
                }
                self.touched.insert(name);
            }
        }
    }

    /// Starts attempts on an endpoint up to its concurrency.
    fn pump(&mut self, service: &Arc<str>) {
        let hook = self.hooks.get(service).cloned();
        let disabled = self.disabled.contains_key(&**service);
        loop {
            let Some(ep) = self.endpoints.get_mut(service) else {
                return;
            };
            if ep.in_flight >= self.cfg.concurrency_per_endpoint {
                return;
            }
            let Some(token) = ep.ready.pop_front() else {
                if ep.in_flight == 0 && ep.tokens.is_empty() {
                    self.endpoints.remove(service);
                }
                return;
            };
            let Some(q) = ep.tokens.get_mut(&token) else {
                continue;
            };
            if q.busy {
                continue;
            }
            let Some(head) = q.items.front_mut() else {
                ep.tokens.remove(&token);
                continue;
            };
            let hook = match &hook {
                Some(h) if h.wants(head.ev.kind) && !disabled => h.clone(),
                _ => {
                    // The webhook went away (or no longer wants this event), or the endpoint
                    // is disabled: settle the event without an attempt.
                    let Some(item) = q.items.pop_front() else {
                        continue;
                    };
                    if q.items.is_empty() {
                        ep.tokens.remove(&token);
                    } else {
                        ep.ready.push_back(token);
                    }
                    if disabled && hook.is_some() {
                        self.dead(item, Some(410), "endpoint disabled (HTTP 410)".into());
                    } else {
                        self.resolve(item, false);
                    }
                    continue;
                }
            };
            head.first_attempt.get_or_insert_with(Instant::now);
            let ev = head.ev.clone();
            q.busy = true;
            ep.in_flight += 1;
            let tx = self.tx.clone();
            let service = service.clone();
            let timeout = self.cfg.attempt_timeout;
            tokio::spawn(async move {
                let id = event_id(ev.seq, ev.index);
                let token = hook.shared_token.as_deref().map(String::as_str);
                let body = sign::body(&id, &ev, ev.username.as_deref(), token);
                let timestamp = now_ms() / 1000;
                let signature = sign::signature_header(&hook.keys, &id, timestamp, &body);
                let attempt = match (&hook.client, &hook.uri) {
                    (Ok(c), Ok(uri)) => {
                        let signed = Signed {
                            id: &id,
                            timestamp,
                            signature,
                        };
                        http::post(c, uri, signed, body, timeout).await
                    }
                    (Err(e), _) => Attempt {
                        status: None,
                        retry_after: None,
                        error: Some(e.clone()),
                    },
                    (_, Err(e)) => Attempt {
                        status: None,
                        retry_after: None,
                        error: Some(e.clone()),
                    },
                };
                let _ = tx.send(Msg::Done {
                    service,
                    token: ev.token_id.0,
                    attempt,
                });
            });
        }
    }

    fn done(&mut self, service: Arc<str>, token: [u8; 16], attempt: Attempt) {
        self.touched.insert(service.clone());
        let disabled_now = self.disabled.contains_key(&*service);
        let now = Instant::now();
        let Some(ep) = self.endpoints.get_mut(&service) else {
            return;
        };
        ep.in_flight = ep.in_flight.saturating_sub(1);
        let Some(q) = ep.tokens.get_mut(&token) else {
            return;
        };
        let Some(head) = q.items.front_mut() else {
            return;
        };
        head.attempts += 1;
        tracing::debug!(
            service = %service,
            event = %head.ev.kind.name(),
            sequence = head.ev.seq,
            attempt = head.attempts,
            status = attempt.status,
            error = attempt.error.as_deref(),
            "webhooks: delivery attempt"
        );
        let ok = attempt.status.is_some_and(|s| (200..300).contains(&s));
        let gone = attempt.status == Some(410);
        let deadline = head.first_attempt.unwrap_or(now) + self.cfg.retry_for;
        let give_up = !ok && (gone || disabled_now || now >= deadline);
        if ok || give_up {
            let Some(item) = q.items.pop_front() else {
                return;
            };
            q.busy = false;
            if q.items.is_empty() {
                ep.tokens.remove(&token);
            } else {
                ep.ready.push_back(token);
            }
            if ok {
                metrics::counter!("zoftoken_webhook_delivered_total").increment(1);
                let lat = now_ms().saturating_sub(item.ev.time_ms) as f64 / 1000.0;
                metrics::histogram!("zoftoken_webhook_latency_seconds").record(lat);
                self.resolve(item, false);
            } else {
                if gone && !disabled_now {
                    if let Some(h) = self.hooks.get(&service) {
                        let d = DisabledEndpoint {
                            service: service.to_string(),
                            url: h.url.clone(),
                            status: 410,
                            at_ms: now_ms(),
                            fingerprint: h.fingerprint,
                        };
                        self.pending.disable(&d);
                        self.disabled.insert(service.to_string(), d);
                        metrics::counter!("zoftoken_webhook_endpoints_disabled_total").increment(1);
                    }
                }
                let err = attempt
                    .error
                    .unwrap_or_else(|| "endpoint disabled (HTTP 410)".into());
                self.dead(item, attempt.status, err);
            }
            return;
        }
        // Retry later: `Retry-After` on 429/503, else the schedule with jitter.
        let (delay, steps) = retry_delay(
            &self.cfg,
            &mut self.rng,
            &attempt,
            head.step,
            deadline.saturating_duration_since(now),
        );
        head.step += steps;
        metrics::counter!("zoftoken_webhook_retried_total").increment(1);
        self.timer_serial += 1;
        self.timers
            .push(Reverse((now + delay, self.timer_serial, service, token)));
    }

    fn dead(&mut self, item: Item, status: Option<u16>, error: String) {
        let r = DeadLetterRecord {
            event: item.ev.clone(),
            attempts: item.attempts,
            last_status: status,
            last_error: error,
            dead_at_ms: now_ms(),
        };
        self.pending.dead_letter(&r);
        metrics::counter!("zoftoken_webhook_failed_total").increment(1);
        self.resolve(item, true);
    }

    /// The event needs nothing more: delivered, not subscribed, or dead-lettered.
    fn resolve(&mut self, item: Item, dead: bool) {
        self.undelivered.remove(&item.order());
        self.shared.in_memory.fetch_sub(1, Ordering::Relaxed);
        let (seq, index) = (item.ev.seq, item.ev.index);
        if item.replay {
            if !dead {
                self.pending.replay_done(seq, index);
            }
            self.replays_done.push((seq, index));
        } else if let Some((bits, left)) = self.commits.get_mut(&seq) {
            set_bit(bits, index);
            *left = left.saturating_sub(1);
            if *left == 0 {
                self.commits.remove(&seq);
                self.dirty.remove(&seq);
                self.pending.finished(seq);
                self.finished.push(seq);
            } else {
                self.dirty.insert(seq);
            }
        }
        self.note_pending(1);
    }

    fn note_pending(&mut self, n: usize) {
        self.pending_count += n;
        self.pending_since.get_or_insert_with(Instant::now);
    }

    fn flush(&mut self) {
        for seq in std::mem::take(&mut self.dirty) {
            if let Some((bits, _)) = self.commits.get(&seq) {
                self.pending.progress(seq, bits);
            }
        }
        self.pending_since = None;
        self.pending_count = 0;
        self.export_gauges();
        if self.pending.is_empty() && self.replays_done.is_empty() {
            return;
        }
        let m = WriterMsg {
            write: std::mem::take(&mut self.pending),
            finished: std::mem::take(&mut self.finished),
            replays_done: std::mem::take(&mut self.replays_done),
        };
        if let Some(w) = &self.writer {
            let _ = w.send(m);
        }
    }
}
