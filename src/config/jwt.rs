//! `[workload.jwt]`: the key that signs JWT-SVIDs and how long they live.
//! The key is a second key pair in the same token as the CA key, under its
//! own label; `hsmca init` makes it, `hsmca init --rotate-jwt-key` replaces
//! it (the replaced pair is kept as `<key_label>.previous`).

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, KeyType, invalid};

/// Suffix of the label the replaced JWT key pair gets at a rotation.
pub const PREVIOUS_SUFFIX: &str = ".previous";

pub const MIN_JWT_LIFETIME: Duration = Duration::from_secs(10);
pub const MAX_JWT_LIFETIME: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// CKA_LABEL of the JWT signing key pair (never the CA key's).
    pub key_label: String,
    /// p256 (ES256, the default), p384 (ES384) or rsa2048/3072/4096 (RS256).
    pub key_type: KeyType,
    /// Lifetime of a JWT-SVID (`exp` − `iat`).
    #[serde(with = "humantime_serde")]
    pub lifetime: Duration,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            key_label: "hsmca-jwt".into(),
            key_type: KeyType::P256,
            lifetime: Duration::from_secs(300),
        }
    }
}

impl JwtConfig {
    /// The label the previous key pair carries after a rotation.
    pub fn previous_label(&self) -> String {
        format!("{}{PREVIOUS_SUFFIX}", self.key_label)
    }

    /// Checks this section; `ca_key_label` is the CA key's label, which the
    /// JWT key must not share.
    pub fn validate(&self, ca_key_label: Option<&str>) -> Result<(), ConfigError> {
        let label = &self.key_label;
        if label.is_empty() || label.len() > 64 || label.chars().any(char::is_control) {
            return Err(invalid(
                "workload.jwt.key_label",
                "must be 1 to 64 characters without control characters",
            ));
        }
        if label.ends_with(PREVIOUS_SUFFIX) {
            return Err(invalid(
                "workload.jwt.key_label",
                format!("must not end in {PREVIOUS_SUFFIX:?} (the label a rotated-out key gets)"),
            ));
        }
        if let Some(ca) = ca_key_label
            && (ca == label || ca == self.previous_label())
        {
            return Err(invalid(
                "workload.jwt.key_label",
                "must differ from token.key_label: JWT-SVIDs are never signed with the CA key",
            ));
        }
        if !(MIN_JWT_LIFETIME..=MAX_JWT_LIFETIME).contains(&self.lifetime) {
            return Err(invalid(
                "workload.jwt.lifetime",
                "must be between 10s and 24h (JWT-SVIDs are meant to be short-lived)",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml: &str) -> Result<JwtConfig, String> {
        let raw = config::Config::builder()
            .add_source(config::File::from_str(toml, config::FileFormat::Toml))
            .build()
            .map_err(|e| e.to_string())?;
        raw.try_deserialize().map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_es256_for_five_minutes() {
        let c = parse("").unwrap();
        assert_eq!(c, JwtConfig::default());
        assert_eq!(c.key_type, KeyType::P256);
        assert_eq!(c.lifetime, Duration::from_secs(300));
        assert_eq!(c.previous_label(), "hsmca-jwt.previous");
        c.validate(Some("hsmca-ca")).unwrap();
    }

    #[test]
    fn bounds_and_labels_are_checked() {
        let c = parse("key_type = \"p384\"\nlifetime = \"1h\"").unwrap();
        c.validate(None).unwrap();
        for (toml, key) in [
            ("lifetime = \"5s\"", "workload.jwt.lifetime"),
            ("lifetime = \"25h\"", "workload.jwt.lifetime"),
            ("key_label = \"\"", "workload.jwt.key_label"),
            ("key_label = \"k.previous\"", "workload.jwt.key_label"),
            ("key_label = \"hsmca-ca\"", "workload.jwt.key_label"),
        ] {
            let err = parse(toml).unwrap().validate(Some("hsmca-ca")).unwrap_err();
            assert!(
                matches!(&err, ConfigError::Invalid { key: k, .. } if *k == key),
                "{toml}: {err}"
            );
        }
        assert!(parse("key_type = \"ed25519\"").is_err());
        assert!(parse("unknown = 1").is_err());
    }
}
