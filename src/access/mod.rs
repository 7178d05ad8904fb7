//! Who is calling: bearer-token authentication (OIDC discovery + JWKS) and the caller principal.
//! Authorisation policies (casbin, consent) build on the `Caller` this module produces.

pub mod claims;
pub mod dev_issuer;
pub mod principal;
pub mod verifier;

pub use principal::{Caller, OdsCode, Principal, SystemCaller, UserCaller};
pub use verifier::{AuthError, TokenVerifier};
