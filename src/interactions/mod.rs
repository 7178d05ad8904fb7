//! FHIR interaction semantics over the store: create, read, vread, update, delete, conditional
//! variants, history, and transaction/batch Bundles. The REST API and `shcr import` both come
//! through here, so a resource is accepted or refused the same way whichever door it used.

pub mod bundle;
pub mod criteria;
pub mod error;
mod group;
mod prepare;
mod references;
mod transaction;

pub use error::Error;
pub use group::{Unit, UnitResult};
pub use transaction::{
    EntryAction, EntryFailure, EntryOutcome, EntryRequest, HookDecision, Matched, NoHook, Target,
    WriteHook,
};

use std::sync::Arc;

use crate::access::labels::LabelCell;
use crate::fhir::outcome::IssueType;
use crate::search::params::Registry;
use crate::store::{Current, HistoryPage, HistoryQuery, HistoryScope, Store, VersionRow};

#[derive(Clone)]
pub struct Repository {
    store: Store,
    /// The sensitivity mapping every write is labelled with (swapped on policy reload).
    labels: Arc<LabelCell>,
    /// Sandbox: run every write to just before commit, then roll back (see `sandboxed`).
    rollback: bool,
    /// The search parameters whose patient-compartment extraction every stored version keeps
    /// (with their `compartment_key`); `None` for tools without a server, whose versions are
    /// decided from their content when read.
    compartments: Option<(Arc<Registry>, i64)>,
}

impl Repository {
    /// A repository labelling with the built-in sensitivity mapping (tools without a server).
    pub fn new(store: Store) -> Repository {
        Repository {
            store,
            labels: LabelCell::builtin(),
            rollback: false,
            compartments: None,
        }
    }

    /// A repository labelling with the server's live mapping.
    pub fn with_labels(store: Store, labels: Arc<LabelCell>) -> Repository {
        Repository {
            store,
            labels,
            rollback: false,
            compartments: None,
        }
    }

    /// The `compartment_key` of the versions this repository writes, if it keeps compartments.
    pub fn compartment_key(&self) -> Option<i64> {
        self.compartments.as_ref().map(|(_, key)| *key)
    }

    /// Keeps each written version's patient-compartment references as `registry` extracts
    /// them (`search::index::compartment_candidates`), so reads need not extract them.
    pub fn with_compartments(mut self, registry: Arc<Registry>) -> Repository {
        let key = crate::search::index::compartment_key(&registry);
        self.compartments = Some((registry, key));
        self
    }

    /// The same engine for a trust's trial run: writes go through validation, conditions,
    /// reference resolution, locking and versioning exactly as for real, and the transaction
    /// is rolled back instead of committed, so nothing is stored, fed or notified.
    pub fn sandboxed(&self) -> Repository {
        Repository {
            store: self.store.clone(),
            labels: self.labels.clone(),
            rollback: true,
            compartments: self.compartments.clone(),
        }
    }

    pub fn is_sandbox(&self) -> bool {
        self.rollback
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn check_type(resource_type: &str) -> Result<(), Error> {
        if crate::validation::is_resource_type(resource_type) {
            Ok(())
        } else {
            Err(Error::UnknownType(resource_type.to_string()))
        }
    }

    pub fn check_id(id: &str) -> Result<(), Error> {
        if crate::fhir::id::is_valid_id(id) {
            Ok(())
        } else {
            Err(Error::invalid(
                IssueType::Invalid,
                format!("'{id}' is not a valid FHIR id ([A-Za-z0-9-.]{{1,64}})"),
            ))
        }
    }

    /// The current version; 404 if never written, 410 if its latest version is a deletion.
    pub async fn read(&self, resource_type: &str, id: &str) -> Result<VersionRow, Error> {
        Self::check_type(resource_type)?;
        Self::check_id(id)?;
        Self::current_row(self.store.read(resource_type, id).await?, resource_type, id)
    }

    /// The answer a read gives for the current state of `resource_type/id`.
    pub fn current_row(
        current: Current,
        resource_type: &str,
        id: &str,
    ) -> Result<VersionRow, Error> {
        match current {
            Current::Found(v) => Ok(v),
            Current::Deleted(_) => Err(Error::Gone(format!("{resource_type}/{id}"))),
            Current::NotFound => Err(Error::NotFound(format!("{resource_type}/{id}"))),
        }
    }

    pub async fn vread(
        &self,
        resource_type: &str,
        id: &str,
        version: &str,
    ) -> Result<VersionRow, Error> {
        Self::check_type(resource_type)?;
        Self::check_id(id)?;
        let version_id: i64 = version.parse().ok().filter(|v| *v > 0).ok_or_else(|| {
            Error::invalid(
                IssueType::Invalid,
                format!("'{version}' is not a version id of this server (a positive integer)"),
            )
        })?;
        match self.store.vread(resource_type, id, version_id).await? {
            Some(v) if v.deleted => Err(Error::Gone(format!(
                "{resource_type}/{id}/_history/{version_id}"
            ))),
            Some(v) => Ok(v),
            None => Err(Error::NotFound(format!(
                "{resource_type}/{id}/_history/{version_id}"
            ))),
        }
    }

    pub async fn history(
        &self,
        scope: &HistoryScope,
        query: &HistoryQuery,
    ) -> Result<HistoryPage, Error> {
        match scope {
            HistoryScope::System => {}
            HistoryScope::Type(t) => Self::check_type(t)?,
            HistoryScope::Instance(t, id) => {
                Self::check_type(t)?;
                Self::check_id(id)?;
                if !self.store.exists_ever(t, id).await? {
                    return Err(Error::NotFound(format!("{t}/{id}")));
                }
            }
        }
        Ok(self.store.history(scope, query).await?)
    }
}
