//! hsmca: a certificate authority daemon whose CA key never leaves a PKCS#11
//! token. Modules follow a request: `server` (socket, gRPC) → `issue`
//! (validation, certificate building) → `signing` (digest-only contract) →
//! `token` (PKCS#11 sessions on their own threads) → `store` (durable
//! records). `requests` keeps certificate requests issued and renewed in the
//! background.

pub mod audit;
pub mod bench;
pub mod ca;
pub mod cli;
pub mod client;
pub mod config;
pub mod crl;
pub mod issue;
pub mod jwt;
pub mod keyed_locks;
pub mod metrics;
pub mod names;
pub mod peer;
pub mod pem_input;
pub mod pin;
pub mod pkcs11_uri;
pub mod policy;
pub mod profile;
pub mod proto;
pub mod requests;
pub mod revocation;
pub mod sds;
pub mod server;
pub mod signing;
pub mod spiffe_id;
pub mod store;
pub mod systemd;
pub mod time;
pub mod token;
pub mod verify;
pub mod workload;
