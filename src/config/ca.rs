//! `[ca]`, `[profiles]` and `[crl]`: the CA certificate and key scheme,
//! the lifetime bounds of each profile, and the CRL's period.

use std::{path::PathBuf, time::Duration};

use serde::Deserialize;

use super::KeyType;
use super::{ConfigError, invalid};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RsaPadding {
    /// RSASSA-PKCS1-v1_5 (CKM_RSA_PKCS over a DigestInfo).
    #[default]
    Pkcs1,
    /// RSASSA-PSS (CKM_RSA_PKCS_PSS over the digest), salt = digest length.
    Pss,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DigestAlg {
    Sha256,
    Sha384,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaConfig {
    pub key_type: KeyType,
    #[serde(default)]
    pub rsa_padding: RsaPadding,
    /// Hash for an RSA CA (EC CAs use the curve's own: SHA-256 for P-256,
    /// SHA-384 for P-384).
    #[serde(default)]
    pub digest: Option<DigestAlg>,
    /// Subject of the CA certificate made by `hsmca init`, RFC 4514 form.
    #[serde(default = "default_subject")]
    pub subject: String,
    /// The issuing CA certificate (written by `hsmca init`).
    pub certificate: PathBuf,
    /// The issuers above the CA certificate, nearest first, when the CA is an
    /// intermediate (written by `hsmca init --import-chain`).
    #[serde(default)]
    pub chain: Option<PathBuf>,
    /// Lifetime of the self-signed root made by `hsmca init`.
    #[serde(default = "default_ca_validity", with = "humantime_serde")]
    pub validity: Duration,
    /// CRL distribution point written into issued certificates, if any.
    #[serde(default)]
    pub crl_url: Option<String>,
    /// How far notBefore is set in the past, to tolerate clock skew between
    /// this host and relying parties.
    #[serde(default = "default_backdate", with = "humantime_serde")]
    pub backdate: Duration,
}

fn default_subject() -> String {
    "CN=hsmca CA".into()
}
fn default_ca_validity() -> Duration {
    Duration::from_secs(10 * 365 * 24 * 3600)
}
fn default_backdate() -> Duration {
    Duration::from_secs(60)
}

impl CaConfig {
    pub fn digest(&self) -> DigestAlg {
        match self.key_type {
            KeyType::P256 => DigestAlg::Sha256,
            KeyType::P384 => DigestAlg::Sha384,
            _ => self.digest.unwrap_or(DigestAlg::Sha256),
        }
    }
}

/// Lifetime bounds of each certificate profile.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProfilesConfig {
    pub client: ProfileBounds,
    pub server: ProfileBounds,
    #[serde(default = "intermediate_bounds")]
    pub intermediate: ProfileBounds,
}

impl Default for ProfilesConfig {
    fn default() -> Self {
        Self {
            client: ProfileBounds::default(),
            server: ProfileBounds::default(),
            intermediate: intermediate_bounds(),
        }
    }
}

/// Intermediates (for mesh agents) live a day by default, at most a week.
fn intermediate_bounds() -> ProfileBounds {
    ProfileBounds {
        default_duration: Duration::from_secs(24 * 3600),
        min_duration: Duration::from_secs(3600),
        max_duration: Duration::from_secs(7 * 24 * 3600),
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProfileBounds {
    #[serde(with = "humantime_serde")]
    pub default_duration: Duration,
    #[serde(with = "humantime_serde")]
    pub min_duration: Duration,
    #[serde(with = "humantime_serde")]
    pub max_duration: Duration,
}

impl Default for ProfileBounds {
    fn default() -> Self {
        Self {
            default_duration: Duration::from_secs(24 * 3600),
            min_duration: Duration::from_secs(3600),
            max_duration: Duration::from_secs(24 * 3600),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CrlConfig {
    /// nextUpdate − thisUpdate. A new CRL is made at the middle of this
    /// period and after every revocation.
    #[serde(with = "humantime_serde")]
    pub validity: Duration,
}

impl Default for CrlConfig {
    fn default() -> Self {
        Self {
            validity: Duration::from_secs(24 * 3600),
        }
    }
}

impl CaConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !self.key_type.is_rsa() {
            if self.rsa_padding != RsaPadding::Pkcs1 {
                return Err(invalid(
                    "ca.rsa_padding",
                    "applies only to RSA CA keys; remove it for an EC key",
                ));
            }
            if self.digest.is_some_and(|d| d != self.digest()) {
                return Err(invalid(
                    "ca.digest",
                    "an EC CA uses its curve's hash (P-256: sha256, P-384: sha384)",
                ));
            }
        }
        crate::names::parse_subject(&self.subject)
            .map_err(|e| invalid("ca.subject", e.to_string()))?;
        if let Some(url) = &self.crl_url
            && !(url.starts_with("http://") && url.is_ascii())
        {
            return Err(invalid(
                "ca.crl_url",
                "must be an http:// URL (RFC 5280 CRL distribution points are fetched without TLS)",
            ));
        }
        if self.backdate > Duration::from_secs(24 * 3600) {
            return Err(invalid("ca.backdate", "must be at most 24h"));
        }
        if self.validity < Duration::from_secs(24 * 3600) {
            return Err(invalid("ca.validity", "must be at least 24h"));
        }
        Ok(())
    }
}

impl CrlConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.validity < Duration::from_secs(600) {
            return Err(invalid("crl.validity", "must be at least 10m"));
        }
        Ok(())
    }
}

impl ProfilesConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for (key, b) in [
            ("profiles.client", &self.client),
            ("profiles.server", &self.server),
            ("profiles.intermediate", &self.intermediate),
        ] {
            if b.min_duration.is_zero()
                || b.min_duration > b.max_duration
                || b.default_duration < b.min_duration
                || b.default_duration > b.max_duration
            {
                return Err(invalid(
                    key,
                    "needs 0 < min_duration <= default_duration <= max_duration",
                ));
            }
        }
        Ok(())
    }
}
