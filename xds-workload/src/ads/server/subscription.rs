//! One client's subscription to one type URL on one stream: what it holds and what it is
//! still owed.

use std::collections::{HashMap, HashSet, VecDeque};

use super::resources::TypeState;
use crate::pb::envoy::service::discovery::v3::Resource;

/// One client's subscription to one type URL on one stream.
#[derive(Debug, Default)]
pub(super) struct Subscription {
    pub(super) wildcard: bool,
    pub(super) names: HashSet<String>,
    /// What the client holds: name to version.
    pub(super) known: HashMap<String, String>,
    /// Sequence number of the type state this subscription has caught up with.
    pub(super) last_seq: u64,
    /// No response sent yet: the next one is a full snapshot, sent even if empty.
    pub(super) initial: bool,
    /// Names (re)subscribed by name: their state is sent whatever the client holds.
    pub(super) forced: HashSet<String>,
    /// Nonces sent and not yet acknowledged, oldest first.
    pub(super) outstanding: VecDeque<String>,
}

impl Subscription {
    fn interested(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    pub(super) fn pending(&self, ts: Option<&TypeState>) -> bool {
        self.initial || !self.forced.is_empty() || ts.is_some_and(|t| t.seq > self.last_seq)
    }

    /// Decides what to send for `name`.
    fn consider(
        &mut self,
        name: &str,
        ts: Option<&TypeState>,
        forced: bool,
        out: &mut Vec<Resource>,
        removed: &mut Vec<String>,
    ) {
        let entry = ts.and_then(|t| t.resources.get(name));
        match entry {
            Some(entry) if self.interested(name) => {
                if forced || self.known.get(name) != Some(&entry.version) {
                    self.known.insert(name.to_owned(), entry.version.clone());
                    out.push(Resource {
                        version: entry.version.clone(),
                        resource: Some(entry.resource.clone()),
                        name: name.to_owned(),
                        ..Default::default()
                    });
                }
            }
            Some(_) => {}
            None => {
                if self.known.remove(name).is_some() || forced {
                    removed.push(name.to_owned());
                }
            }
        }
    }

    /// Builds the resources and removals this subscription has not been sent yet.
    pub(super) fn build(&mut self, ts: Option<&TypeState>) -> (Vec<Resource>, Vec<String>) {
        let mut out = Vec::new();
        let mut removed = Vec::new();
        let full = self.initial || ts.is_some_and(|t| self.last_seq < t.floor);
        if full {
            if let Some(t) = ts {
                for name in t.resources.keys() {
                    self.consider(name, ts, false, &mut out, &mut removed);
                }
            }
            let gone: Vec<String> = self
                .known
                .keys()
                .filter(|n| !ts.is_some_and(|t| t.resources.contains_key(*n)))
                .cloned()
                .collect();
            for name in gone {
                self.consider(&name, ts, false, &mut out, &mut removed);
            }
        } else if let Some(t) = ts {
            for name in t.log.range(self.last_seq + 1..).map(|(_, n)| n) {
                self.consider(name, ts, false, &mut out, &mut removed);
            }
        }
        if !self.forced.is_empty() {
            let sent: HashSet<String> = out
                .iter()
                .map(|r| r.name.clone())
                .chain(removed.iter().cloned())
                .collect();
            for name in std::mem::take(&mut self.forced) {
                if !sent.contains(&name) {
                    self.consider(&name, ts, true, &mut out, &mut removed);
                }
            }
        }
        self.last_seq = ts.map_or(0, |t| t.seq);
        self.initial = false;
        (out, removed)
    }
}
