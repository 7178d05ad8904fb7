//! Who is calling and what they may see.
//!
//! - authentication: bearer tokens (OIDC discovery + JWKS) → `Caller` (`verifier`, `principal`);
//! - `policy`: the casbin model, role policies, sensitivity mapping and settings from
//!   `consent-policies/`, validated on load and reloadable;
//! - `labels`: sensitivity labelling at ingest;
//! - `facts`: care relationships and consent restrictions, derived at write time;
//! - `org_grants`: an organisation's facts for searches, cached while the change feed and the
//!   clock leave them valid;
//! - `break_glass`: time-limited emergency access with a recorded reason;
//! - `decision`: the per-request `Decider` — `check` for one resource, `search_filter` for
//!   index queries. See its module documentation for the rule.

pub mod break_glass;
pub mod claims;
pub mod decision;
pub mod dev_issuer;
pub mod facts;
pub mod labels;
pub mod org_grants;
pub mod policy;
pub mod principal;
pub mod read_facts;
pub mod verifier;

pub use decision::{Decider, Denial, Facts, Grants, Scope, Verdict, Who};
pub use policy::{AccessPolicy, PolicyError};
pub use principal::{Caller, OdsCode, Principal, SystemCaller, UserCaller};
pub use verifier::{AuthError, TokenVerifier};
