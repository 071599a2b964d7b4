//! The published resources of every type URL, with the change log subscribers catch up
//! from.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

use super::change::ResourceChange;

#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub(super) version: String,
    pub(super) resource: prost_types::Any,
}

/// The resources of one type URL plus a change log that lets each subscriber catch up from
/// the sequence number it last saw.
#[derive(Debug, Default)]
pub(super) struct TypeState {
    /// Sequence number of the last change of this type.
    pub(super) seq: u64,
    pub(super) resources: HashMap<String, Entry>,
    /// Sequence number of the latest change of each name (upsert or removal) to the name.
    pub(super) log: BTreeMap<u64, String>,
    /// Name to its key in `log`.
    pub(super) last_change: HashMap<String, u64>,
    /// Entries of `log` that are removals.
    pub(super) tombstones: usize,
    /// Removals up to this sequence number were dropped from the log: a subscriber that
    /// last saw an older number must compare its whole state.
    pub(super) floor: u64,
}

impl TypeState {
    fn record(&mut self, name: &str, seq: u64, was_present: bool, removal: bool) {
        if let Some(old) = self.last_change.insert(name.to_owned(), seq) {
            self.log.remove(&old);
            if !was_present {
                self.tombstones = self.tombstones.saturating_sub(1);
            }
        }
        self.log.insert(seq, name.to_owned());
        if removal {
            self.tombstones += 1;
        }
        self.seq = seq;
    }

    fn compact(&mut self) {
        if self.tombstones <= self.resources.len().max(1024) {
            return;
        }
        let resources = &self.resources;
        let last_change = &mut self.last_change;
        self.log.retain(|_, name| {
            let keep = resources.contains_key(name);
            if !keep {
                last_change.remove(name);
            }
            keep
        });
        self.tombstones = 0;
        self.floor = self.seq;
    }
}

#[derive(Debug, Default)]
pub(super) struct Resources {
    pub(super) seq: u64,
    pub(super) types: HashMap<String, TypeState>,
}

fn version_of(resource: &prost_types::Any) -> String {
    let mut hasher = DefaultHasher::new();
    resource.type_url.hash(&mut hasher);
    resource.value.hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

pub(super) fn apply_changes(
    resources: &mut Resources,
    type_url: &str,
    changes: impl IntoIterator<Item = ResourceChange>,
) -> usize {
    let mut effective = 0;
    let mut seq = resources.seq;
    let ts = resources.types.entry(type_url.to_owned()).or_default();
    for change in changes {
        match change {
            ResourceChange::Upsert { name, resource } => {
                let version = version_of(&resource);
                let was_present = match ts.resources.get(&name) {
                    Some(e) if e.version == version => continue,
                    Some(_) => true,
                    None => false,
                };
                seq += 1;
                ts.record(&name, seq, was_present, false);
                ts.resources.insert(name, Entry { version, resource });
            }
            ResourceChange::Remove { name } => {
                if ts.resources.remove(&name).is_none() {
                    continue;
                }
                seq += 1;
                ts.record(&name, seq, true, true);
            }
        }
        effective += 1;
    }
    ts.compact();
    resources.seq = seq;
    effective
}
