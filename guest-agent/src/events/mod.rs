//! `/ws/events`: desktop events fanned out to subscribed clients.
//!
//! Each client has its own queue of at most `EVENT_QUEUE_SIZE` events holding only the kinds it
//! subscribed to; when a slow client's queue is full the oldest event is dropped.

mod files;
mod procs;
pub(crate) mod time;
mod x11_watch;

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use tokio::sync::Notify;

use crate::protocol::{Event, EventData, EventKind, EventsIn, EventsOut, EVENT_QUEUE_SIZE};

struct Client {
    subscribed: Mutex<HashSet<EventKind>>,
    queue: Mutex<VecDeque<Event>>,
    wake: Notify,
}

/// Cheap to clone; all clones share the client list.
#[derive(Clone, Default)]
pub struct EventHub {
    clients: Arc<Mutex<Vec<Arc<Client>>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing here can leave the data half-updated on a panic, so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl EventHub {
    pub fn new() -> EventHub {
        EventHub::default()
    }

    /// Queues an event for every client subscribed to its kind.
    pub fn emit(&self, data: EventData) {
        let clients = lock(&self.clients).clone();
        if clients.is_empty() {
            return;
        }
        let kind = data.kind();
        let event = Event {
            timestamp: time::now_iso8601(),
            data,
        };
        for c in clients {
            // The subscription stays locked until the event is queued, so an unsubscribe (which
            // purges the queue under the same lock) is never overtaken by an event it excluded.
            let subscribed = lock(&c.subscribed);
            if !subscribed.contains(&kind) {
                continue;
            }
            let mut q = lock(&c.queue);
            if q.len() >= EVENT_QUEUE_SIZE {
                q.pop_front();
            }
            q.push_back(event.clone());
            drop(q);
            drop(subscribed);
            c.wake.notify_one();
        }
    }

    /// True when some client wants `kind` (lets pollers sleep when nobody listens).
    pub fn wants(&self, kind: EventKind) -> bool {
        lock(&self.clients)
            .iter()
            .any(|c| lock(&c.subscribed).contains(&kind))
    }

    fn add(&self) -> Arc<Client> {
        let c = Arc::new(Client {
            subscribed: Mutex::new(HashSet::new()),
            queue: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
        });
        lock(&self.clients).push(c.clone());
        c
    }

    fn remove(&self, client: &Arc<Client>) {
        lock(&self.clients).retain(|c| !Arc::ptr_eq(c, client));
    }
}

/// Starts the event sources. They run for the life of the agent and emit only while someone
/// listens.
pub fn start_sources(hub: &EventHub, display: &str, home: PathBuf, idle_after: Duration) {
    x11_watch::start(hub.clone(), display.to_string(), idle_after);
    files::start(
        hub.clone(),
        vec![home.join("Desktop"), home.join("Downloads")],
    );
    procs::start(hub.clone());
}

/// The known kinds named (all of them when none is named), and the unknown names.
fn split_known(types: Vec<String>) -> (Vec<EventKind>, Vec<String>) {
    if types.is_empty() {
        return (EventKind::ALL.to_vec(), Vec::new());
    }
    let mut known = Vec::new();
    let mut unknown = Vec::new();
    for t in types {
        match EventKind::parse(&t) {
            Some(k) => known.push(k),
            None => unknown.push(t),
        }
    }
    (known, unknown)
}

async fn send(ws: &mut WebSocket, msg: &EventsOut) -> bool {
    match serde_json::to_string(msg) {
        Ok(t) => ws.send(Message::Text(t.into())).await.is_ok(),
        Err(_) => false,
    }
}

/// Subscribes to or unsubscribes from `kinds`. Unsubscribing also drops the queued events of
/// those kinds: after the `unsubscribed` answer none of them arrives.
fn update_subscription(client: &Client, kinds: &[EventKind], subscribe: bool) {
    let mut set = lock(&client.subscribed);
    for k in kinds {
        if subscribe {
            set.insert(*k);
        } else {
            set.remove(k);
        }
    }
    if !subscribe {
        lock(&client.queue).retain(|e| !kinds.contains(&e.data.kind()));
    }
}

async fn handle_message(ws: &mut WebSocket, client: &Client, text: &str) -> bool {
    let msg = match serde_json::from_str::<EventsIn>(text) {
        Ok(m) => m,
        Err(e) => {
            let message = format!("bad message ({e}); expected subscribe, unsubscribe or ping");
            return send(ws, &EventsOut::Error { message }).await;
        }
    };
    let (types, subscribe) = match msg {
        EventsIn::Ping => return send(ws, &EventsOut::Pong).await,
        EventsIn::Subscribe { event_types } => (event_types, true),
        EventsIn::Unsubscribe { event_types } => (event_types, false),
    };
    let (known, unknown) = split_known(types);
    for u in unknown {
        let message = format!("Unknown event type: {u}");
        if !send(ws, &EventsOut::Error { message }).await {
            return false;
        }
    }
    update_subscription(client, &known, subscribe);
    let event_types = known.iter().map(|k| k.name().to_string()).collect();
    let reply = if subscribe {
        EventsOut::Subscribed { event_types }
    } else {
        EventsOut::Unsubscribed { event_types }
    };
    send(ws, &reply).await
}

pub async fn serve_client(mut ws: WebSocket, hub: EventHub) {
    let client = hub.add();
    loop {
        let next = lock(&client.queue).pop_front();
        if let Some(event) = next {
            if !send(&mut ws, &EventsOut::Event { event }).await {
                break;
            }
            continue;
        }
        tokio::select! {
            _ = client.wake.notified() => {}
            msg = ws.recv() => match msg {
                Some(Ok(Message::Text(t))) => {
                    if !handle_message(&mut ws, &client, t.as_str()).await {
                        break;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            },
        }
    }
    hub.remove(&client);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{IdleData, NoData};

    #[test]
    fn queue_drops_oldest_past_the_limit() {
        let hub = EventHub::new();
        let c = hub.add();
        lock(&c.subscribed).insert(EventKind::Idle);
        for i in 0..(EVENT_QUEUE_SIZE + 10) {
            hub.emit(EventData::Idle(IdleData {
                idle_seconds: i as u64,
            }));
            hub.emit(EventData::Active(NoData {}));
        }
        let q = lock(&c.queue);
        assert_eq!(q.len(), EVENT_QUEUE_SIZE);
        assert_eq!(q[0].data, EventData::Idle(IdleData { idle_seconds: 10 }));
        assert!(q.iter().all(|e| e.data.kind() == EventKind::Idle));
    }

    #[test]
    fn unsubscribing_drops_what_was_queued() {
        let hub = EventHub::new();
        let c = hub.add();
        update_subscription(&c, &[EventKind::Idle, EventKind::Active], true);
        hub.emit(EventData::Idle(IdleData { idle_seconds: 1 }));
        hub.emit(EventData::Active(NoData {}));
        update_subscription(&c, &[EventKind::Idle], false);
        hub.emit(EventData::Idle(IdleData { idle_seconds: 2 }));
        let q = lock(&c.queue);
        assert_eq!(q.len(), 1);
        assert_eq!(q[0].data, EventData::Active(NoData {}));
    }

    #[test]
    fn unknown_types_are_split_out() {
        let (k, u) = split_known(vec!["clipboard".into(), "bogus".into()]);
        assert_eq!(k, vec![EventKind::Clipboard]);
        assert_eq!(u, vec!["bogus"]);
        let (k, u) = split_known(vec![]);
        assert_eq!(k, EventKind::ALL);
        assert!(u.is_empty());
    }
}
