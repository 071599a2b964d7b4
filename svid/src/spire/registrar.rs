//! The registrar: registration entries on the SPIRE server, over its Entry API.
//!
//! [`Registrar::reconcile`] makes the entries under one parent ID equal to a desired set:
//! it lists them, creates the missing ones, updates those whose settings changed, and
//! deletes the rest. Writes are batched; every per-entry status is checked, so one bad
//! entry is reported in [`Report::failed`] and never retried in a loop:
//!
//! - create: an `AlreadyExists` answer carries the existing entry, which is then updated
//!   with its id (the Cilium operator's way);
//! - delete: `NotFound` counts as deleted.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use tonic::transport::Channel;

use super::pb::entry::entry_client::EntryClient;
use super::pb::entry::{
    BatchCreateEntryRequest, BatchDeleteEntryRequest, BatchUpdateEntryRequest, ListEntriesRequest,
    list_entries_request,
};
use super::pb::types;
use super::{Selector, SpireError, deadline, unix_channel};
use crate::id::{SpiffeId, TrustDomain};

/// Settings of a [`Registrar`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RegistrarConfig {
    /// Deadline of each call. Default: 10 seconds.
    pub timeout: Duration,
    /// Most entries per batch call. Default: 50.
    pub batch_size: usize,
    /// Entries per page when listing. Default: 500.
    pub page_size: i32,
}

impl Default for RegistrarConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            batch_size: 50,
            page_size: 500,
        }
    }
}

/// A registration entry as the registrar writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EntrySpec {
    /// The SPIFFE ID the entry issues.
    pub spiffe_id: SpiffeId,
    /// The parent: the node proxy's SPIFFE ID (the authorized delegate).
    pub parent_id: SpiffeId,
    /// The selectors a workload must have (as a set; order does not matter).
    pub selectors: Vec<Selector>,
    /// The X.509-SVID lifetime, or `None` for the server's default.
    pub x509_svid_ttl: Option<Duration>,
}

impl EntrySpec {
    /// The entry of one service account: ID `spiffe://<td>/ns/<ns>/sa/<sa>`, parent
    /// `parent`, selectors `k8s:ns:<ns>` and `k8s:sa:<sa>`.
    pub fn for_service_account(
        trust_domain: &TrustDomain,
        parent: &SpiffeId,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, crate::id::SpiffeIdError> {
        Ok(Self {
            spiffe_id: SpiffeId::from_istio(trust_domain, namespace, service_account)?,
            parent_id: parent.clone(),
            selectors: vec![
                Selector::k8s_namespace(namespace),
                Selector::k8s_service_account(service_account),
            ],
            x509_svid_ttl: None,
        })
    }

    /// What identifies an entry on the server: ID, parent and selector set.
    fn key(&self) -> EntryKey {
        EntryKey {
            spiffe_id: self.spiffe_id.to_string(),
            parent_id: self.parent_id.to_string(),
            selectors: self.selectors.iter().cloned().collect(),
        }
    }

    fn ttl_secs(&self) -> i32 {
        self.x509_svid_ttl
            .map_or(0, |d| i32::try_from(d.as_secs()).unwrap_or(i32::MAX))
    }

    fn to_pb(&self, id: String) -> types::Entry {
        types::Entry {
            id,
            spiffe_id: Some(spiffe_id_pb(&self.spiffe_id)),
            parent_id: Some(spiffe_id_pb(&self.parent_id)),
            selectors: self.selectors.iter().map(Into::into).collect(),
            x509_svid_ttl: self.ttl_secs(),
            ..Default::default()
        }
    }
}

fn spiffe_id_pb(id: &SpiffeId) -> types::Spiffeid {
    types::Spiffeid {
        trust_domain: id.trust_domain().as_str().to_owned(),
        path: id.path().to_owned(),
    }
}

fn spiffe_id_string(id: Option<&types::Spiffeid>) -> String {
    id.map_or_else(String::new, |id| {
        format!("spiffe://{}{}", id.trust_domain, id.path)
    })
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct EntryKey {
    spiffe_id: String,
    parent_id: String,
    selectors: BTreeSet<Selector>,
}

impl EntryKey {
    fn of(entry: &types::Entry) -> Self {
        Self {
            spiffe_id: spiffe_id_string(entry.spiffe_id.as_ref()),
            parent_id: spiffe_id_string(entry.parent_id.as_ref()),
            selectors: entry.selectors.iter().map(Selector::from).collect(),
        }
    }
}

/// An entry as stored on the server.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RegisteredEntry {
    /// The server's entry id.
    pub id: String,
    /// The SPIFFE ID (as the server stores it).
    pub spiffe_id: String,
    /// The parent ID.
    pub parent_id: String,
    /// The selectors.
    pub selectors: Vec<Selector>,
    /// The X.509-SVID lifetime in seconds (0: the server's default).
    pub x509_svid_ttl: i32,
}

impl From<&types::Entry> for RegisteredEntry {
    fn from(e: &types::Entry) -> Self {
        Self {
            id: e.id.clone(),
            spiffe_id: spiffe_id_string(e.spiffe_id.as_ref()),
            parent_id: spiffe_id_string(e.parent_id.as_ref()),
            selectors: e.selectors.iter().map(Selector::from).collect(),
            x509_svid_ttl: e.x509_svid_ttl,
        }
    }
}

/// One entry the server refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EntryFailure {
    /// The SPIFFE ID of the entry, or its id for a delete.
    pub entry: String,
    /// The operation: `create`, `update` or `delete`.
    pub operation: &'static str,
    /// The gRPC code of the per-entry status.
    pub code: tonic::Code,
    /// The server's message.
    pub message: String,
}

/// What a write did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Report {
    /// Entries created.
    pub created: usize,
    /// Entries updated (including those that already existed on create).
    pub updated: usize,
    /// Entries deleted (including those already gone).
    pub deleted: usize,
    /// Entries already as desired.
    pub unchanged: usize,
    /// Entries the server refused; not retried by this call.
    pub failed: Vec<EntryFailure>,
}

impl Report {
    fn merge(&mut self, other: Self) {
        self.created += other.created;
        self.updated += other.updated;
        self.deleted += other.deleted;
        self.unchanged += other.unchanged;
        self.failed.extend(other.failed);
    }
}

fn code_of(status: Option<&types::Status>) -> (tonic::Code, String) {
    status.map_or((tonic::Code::Ok, String::new()), |s| {
        (tonic::Code::from_i32(s.code), s.message.clone())
    })
}

/// The per-item results of a batch call, checked to be one per item sent.
fn one_per_item<T>(call: &'static str, results: Vec<T>, sent: usize) -> Result<Vec<T>, SpireError> {
    if results.len() == sent {
        Ok(results)
    } else {
        Err(SpireError::BadResponse {
            call,
            reason: format!("{} results for {sent} items", results.len()),
        })
    }
}

/// A client of the SPIRE server's Entry API.
#[derive(Debug, Clone)]
pub struct Registrar {
    client: EntryClient<Channel>,
    config: RegistrarConfig,
}

impl Registrar {
    /// A registrar over `channel` (for example [`unix_channel`] to the server's API socket).
    pub fn new(channel: Channel, config: RegistrarConfig) -> Self {
        let mut config = config;
        config.batch_size = config.batch_size.max(1);
        Self {
            client: EntryClient::new(channel),
            config,
        }
    }

    /// A registrar over the server's API unix socket (`unix:///path` or `/path`), connected
    /// lazily. Must be called inside a tokio runtime.
    pub fn connect_unix(endpoint: &str, config: RegistrarConfig) -> Result<Self, SpireError> {
        Ok(Self::new(unix_channel(endpoint, config.timeout)?, config))
    }

    /// Every entry whose parent is exactly `parent`.
    pub async fn list(&self, parent: &SpiffeId) -> Result<Vec<RegisteredEntry>, SpireError> {
        Ok(self
            .list_pb(parent)
            .await?
            .iter()
            .map(RegisteredEntry::from)
            .collect())
    }

    async fn list_pb(&self, parent: &SpiffeId) -> Result<Vec<types::Entry>, SpireError> {
        let mut out = Vec::new();
        let mut page_token = String::new();
        loop {
            let request = ListEntriesRequest {
                filter: Some(list_entries_request::Filter {
                    by_parent_id: Some(spiffe_id_pb(parent)),
                    ..Default::default()
                }),
                output_mask: None,
                page_size: self.config.page_size,
                page_token,
            };
            let mut client = self.client.clone();
            let page = deadline(
                "ListEntries",
                self.config.timeout,
                client.list_entries(request),
            )
            .await?
            .into_inner();
            out.extend(page.entries);
            if page.next_page_token.is_empty() {
                return Ok(out);
            }
            page_token = page.next_page_token;
        }
    }

    /// Creates `entries`; one that already exists is updated with the existing id.
    pub async fn create_or_update(&self, entries: &[EntrySpec]) -> Result<Report, SpireError> {
        let mut report = Report::default();
        for batch in entries.chunks(self.config.batch_size) {
            let request = BatchCreateEntryRequest {
                entries: batch.iter().map(|e| e.to_pb(String::new())).collect(),
                output_mask: None,
            };
            let mut client = self.client.clone();
            let response = deadline(
                "BatchCreateEntry",
                self.config.timeout,
                client.batch_create_entry(request),
            )
            .await?;
            let results = one_per_item(
                "BatchCreateEntry",
                response.into_inner().results,
                batch.len(),
            )?;
            let mut updates = Vec::new();
            for (spec, result) in batch.iter().zip(results) {
                match code_of(result.status.as_ref()) {
                    (tonic::Code::Ok, _) => report.created += 1,
                    (tonic::Code::AlreadyExists, message) => match result.entry {
                        Some(existing) if !existing.id.is_empty() => {
                            updates.push(spec.to_pb(existing.id));
                        }
                        _ => report.failed.push(EntryFailure {
                            entry: spec.spiffe_id.to_string(),
                            operation: "create",
                            code: tonic::Code::AlreadyExists,
                            message: format!("{message} (the server did not name the entry)"),
                        }),
                    },
                    (code, message) => report.failed.push(EntryFailure {
                        entry: spec.spiffe_id.to_string(),
                        operation: "create",
                        code,
                        message,
                    }),
                }
            }
            report.merge(self.update(updates).await?);
        }
        Ok(report)
    }

    /// Updates entries by id (all their managed fields).
    async fn update(&self, entries: Vec<types::Entry>) -> Result<Report, SpireError> {
        let mut report = Report::default();
        for batch in entries.chunks(self.config.batch_size) {
            let request = BatchUpdateEntryRequest {
                entries: batch.to_vec(),
                input_mask: Some(types::EntryMask {
                    spiffe_id: true,
                    parent_id: true,
                    selectors: true,
                    x509_svid_ttl: true,
                    ..Default::default()
                }),
                output_mask: None,
            };
            let mut client = self.client.clone();
            let response = deadline(
                "BatchUpdateEntry",
                self.config.timeout,
                client.batch_update_entry(request),
            )
            .await?;
            let results = one_per_item(
                "BatchUpdateEntry",
                response.into_inner().results,
                batch.len(),
            )?;
            for (entry, result) in batch.iter().zip(results) {
                match code_of(result.status.as_ref()) {
                    (tonic::Code::Ok, _) => report.updated += 1,
                    (code, message) => report.failed.push(EntryFailure {
                        entry: spiffe_id_string(entry.spiffe_id.as_ref()),
                        operation: "update",
                        code,
                        message,
                    }),
                }
            }
        }
        Ok(report)
    }

    /// Deletes the entries with these ids; ids the server does not know count as deleted.
    pub async fn delete(&self, ids: &[String]) -> Result<Report, SpireError> {
        let mut report = Report::default();
        for batch in ids.chunks(self.config.batch_size) {
            let request = BatchDeleteEntryRequest {
                ids: batch.to_vec(),
            };
            let mut client = self.client.clone();
            let response = deadline(
                "BatchDeleteEntry",
                self.config.timeout,
                client.batch_delete_entry(request),
            )
            .await?;
            let results = one_per_item(
                "BatchDeleteEntry",
                response.into_inner().results,
                batch.len(),
            )?;
            for (id, result) in batch.iter().zip(results) {
                match code_of(result.status.as_ref()) {
                    (tonic::Code::Ok | tonic::Code::NotFound, _) => report.deleted += 1,
                    (code, message) => report.failed.push(EntryFailure {
                        entry: id.clone(),
                        operation: "delete",
                        code,
                        message,
                    }),
                }
            }
        }
        Ok(report)
    }

    /// Makes the entries parented to `parent` equal to `desired` (whose entries must all
    /// have that parent; others are reported as failed): creates the missing, updates those
    /// whose lifetime differs, deletes the others and duplicates.
    pub async fn reconcile(
        &self,
        parent: &SpiffeId,
        desired: &[EntrySpec],
    ) -> Result<Report, SpireError> {
        let mut report = Report::default();
        let mut wanted: HashMap<EntryKey, &EntrySpec> = HashMap::new();
        for spec in desired {
            if &spec.parent_id == parent {
                wanted.insert(spec.key(), spec);
            } else {
                report.failed.push(EntryFailure {
                    entry: spec.spiffe_id.to_string(),
                    operation: "create",
                    code: tonic::Code::InvalidArgument,
                    message: format!(
                        "parent {} is not the reconciled parent {parent}",
                        spec.parent_id
                    ),
                });
            }
        }
        let mut seen: HashSet<EntryKey> = HashSet::new();
        let mut updates = Vec::new();
        let mut deletes = Vec::new();
        for existing in self.list_pb(parent).await? {
            let key = EntryKey::of(&existing);
            match wanted.get(&key) {
                Some(spec) if seen.insert(key) => {
                    if existing.x509_svid_ttl == spec.ttl_secs() {
                        report.unchanged += 1;
                    } else {
                        updates.push(spec.to_pb(existing.id));
                    }
                }
                _ => deletes.push(existing.id),
            }
        }
        let missing: Vec<EntrySpec> = wanted
            .iter()
            .filter(|(k, _)| !seen.contains(*k))
            .map(|(_, s)| (*s).clone())
            .collect();
        report.merge(self.delete(&deletes).await?);
        report.merge(self.update(updates).await?);
        report.merge(self.create_or_update(&missing).await?);
        Ok(report)
    }
}
