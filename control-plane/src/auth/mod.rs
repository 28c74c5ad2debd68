//! Credentials: password hashing and policy ([`passwords`]), signed access
//! tokens and opaque refresh tokens ([`tokens`]).

pub mod keyring;
pub mod passwords;
pub mod tokens;

pub use keyring::{KeyRing, RingKey, RotationPolicy};
pub use passwords::Passwords;
pub use tokens::{AccessClaims, SigningKey, Tokens};
