//! `[token]`: where the PKCS#11 module, the token, the PIN and the CA key
//! are, and the key types a CA key may have.

use std::path::PathBuf;

use serde::Deserialize;

use super::{ConfigError, invalid};
use crate::pkcs11_uri::Pkcs11Uri;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Path of the PKCS#11 module (shared library).
    #[serde(default)]
    pub module: Option<PathBuf>,
    /// RFC 7512 URI naming the token and key, e.g.
    /// `pkcs11:token=hsmca;object=hsmca-ca;id=%01`. Its attributes fill in
    /// `token_label`, `key_label` and `key_id` when those are not set.
    #[serde(default)]
    pub uri: Option<String>,
    #[serde(default)]
    pub token_label: Option<String>,
    #[serde(default)]
    pub key_label: Option<String>,
    /// CKA_ID of the CA key, as hex.
    #[serde(default)]
    pub key_id: Option<String>,
    /// File holding the user PIN; must not be readable by group or others.
    #[serde(default)]
    pub pin_file: Option<PathBuf>,
    /// Name of the systemd credential holding the PIN (`LoadCredential=`).
    #[serde(default = "default_pin_credential")]
    pub pin_credential: String,
    /// Number of PKCS#11 sessions, each driven by its own signing thread.
    #[serde(default = "default_sessions")]
    pub sessions: usize,
    /// Depth of the queue in front of the signing threads; a full queue
    /// fails requests fast instead of growing without bound.
    #[serde(default = "default_queue_depth")]
    pub queue_depth: usize,
}

fn default_pin_credential() -> String {
    "hsmca-pin".into()
}
fn default_sessions() -> usize {
    2
}
fn default_queue_depth() -> usize {
    4096
}

/// The token coordinates after merging the URI with the explicit keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenLocator {
    pub module: PathBuf,
    pub token_label: String,
    pub key_label: Option<String>,
    pub key_id: Option<Vec<u8>>,
}

impl TokenConfig {
    pub fn locator(&self) -> Result<TokenLocator, ConfigError> {
        let uri = match &self.uri {
            Some(u) => Some(Pkcs11Uri::parse(u).map_err(|e| invalid("token.uri", e.to_string()))?),
            None => None,
        };
        let module = self
            .module
            .clone()
            .or_else(|| uri.as_ref().and_then(|u| u.module_path.clone()))
            .ok_or_else(|| invalid("token.module", "the PKCS#11 module path is required"))?;
        let token_label = self
            .token_label
            .clone()
            .or_else(|| uri.as_ref().and_then(|u| u.token.clone()))
            .ok_or_else(|| {
                invalid(
                    "token.token_label",
                    "name the token by token_label or by token= in token.uri",
                )
            })?;
        let key_label = self
            .key_label
            .clone()
            .or_else(|| uri.as_ref().and_then(|u| u.object.clone()));
        let key_id = match &self.key_id {
            Some(hex_id) => Some(
                hex::decode(hex_id.trim_start_matches("0x"))
                    .map_err(|_| invalid("token.key_id", "must be hex, e.g. \"01\""))?,
            ),
            None => uri.as_ref().and_then(|u| u.id.clone()),
        };
        if key_label.is_none() && key_id.is_none() {
            return Err(invalid(
                "token.key_label",
                "name the CA key by key_label and/or key_id (or object=/id= in token.uri)",
            ));
        }
        if key_id.as_ref().is_some_and(|id| id.is_empty()) {
            return Err(invalid("token.key_id", "must not be empty"));
        }
        Ok(TokenLocator {
            module,
            token_label,
            key_label,
            key_id,
        })
    }
}

/// Key types a CA key may have. Ed25519 is absent on purpose: it cannot sign
/// a pre-computed digest, and the token only ever sees digests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyType {
    P256,
    P384,
    Rsa2048,
    Rsa3072,
    Rsa4096,
}

impl KeyType {
    pub fn is_rsa(self) -> bool {
        matches!(self, Self::Rsa2048 | Self::Rsa3072 | Self::Rsa4096)
    }
    pub fn rsa_bits(self) -> Option<u64> {
        match self {
            Self::Rsa2048 => Some(2048),
            Self::Rsa3072 => Some(3072),
            Self::Rsa4096 => Some(4096),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::P256 => "p256",
            Self::P384 => "p384",
            Self::Rsa2048 => "rsa2048",
            Self::Rsa3072 => "rsa3072",
            Self::Rsa4096 => "rsa4096",
        }
    }
}

impl TokenConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        self.locator()?;
        if !(1..=64).contains(&self.sessions) {
            return Err(invalid("token.sessions", "must be between 1 and 64"));
        }
        if !(1..=1_000_000).contains(&self.queue_depth) {
            return Err(invalid(
                "token.queue_depth",
                "must be between 1 and 1000000",
            ));
        }
        if self.pin_credential.is_empty() || self.pin_credential.contains('/') {
            return Err(invalid(
                "token.pin_credential",
                "must be a plain credential name without '/'",
            ));
        }
        Ok(())
    }
}
