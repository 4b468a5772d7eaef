//! The JWT-SVID key at the command line: `hsmca init` makes it (and
//! `--rotate-jwt-key` replaces it), and `serve` turns the key it found into
//! the [`JwtAuthority`] the Workload API uses, after a start-up self-test.

use std::{sync::Arc, time::SystemTime};

use super::CliResult;
use crate::{
    config::{Config, JwtConfig},
    jwt::{JwtAuthority, JwtSigner, PublicJwtKey},
    spiffe_id::SpiffeId,
    token::{Token, jwt_key, jwt_key::JwtKeyPair, pool::SignerPool},
};

/// The JWT key settings, when the workload endpoint is configured.
pub fn configured(cfg: &Config) -> Option<&JwtConfig> {
    cfg.workload.enabled().then_some(&cfg.workload.jwt)
}

/// Makes the JWT key pair if it is missing, or with `rotate` replaces it
/// (the old pair is kept as `<key_label>.previous`). True when a key was
/// made.
pub async fn init_jwt_key(cfg: &Config, jwt: &JwtConfig, rotate: bool) -> CliResult<bool> {
    let pin = crate::pin::load_pin(&cfg.token)?;
    let locator = cfg.token.locator()?;
    let jwt = jwt.clone();
    let (msg, made) = tokio::task::spawn_blocking(move || -> CliResult<(String, bool)> {
        let token = Token::open(&locator, &pin)?;
        let result = if rotate {
            jwt_key::rotate_jwt_key(
                &token,
                &jwt.key_label,
                &jwt.previous_label(),
                jwt.key_type,
            )
            .map(|(new, old)| match old {
                Some(old) => (format!(
                    "rotated the JWT key {:?}: new {} key id {}; the previous one (id {}) is now {:?} and stays in the JWT bundle for one JWT lifetime after the daemon restarts",
                    jwt.key_label,
                    jwt.key_type.name(),
                    hex::encode(&new.id),
                    hex::encode(&old.id),
                    jwt.previous_label()
                ), true),
                None => (format!(
                    "generated JWT key {} (label {:?}, id {}); there was none to rotate",
                    jwt.key_type.name(),
                    jwt.key_label,
                    hex::encode(&new.id)
                ), true),
            })
        } else {
            jwt_key::ensure_jwt_key(&token, &jwt.key_label, jwt.key_type).map(|(k, created)| {
                (format!(
                    "{} JWT key {} (label {:?}, id {}) in the token",
                    if created { "generated" } else { "using existing" },
                    jwt.key_type.name(),
                    k.label,
                    hex::encode(&k.id)
                ), created)
            })
        };
        token.close();
        Ok(result?)
    })
    .await??;
    eprintln!("{msg}");
    Ok(made)
}

/// The JWT authority over the pool's first extra key (see
/// `serve::open_signers`). A JWT-SVID is signed and validated before
/// anything is served: proof that the key, the mechanism and the encoding
/// agree.
pub async fn authority(
    pool: &Arc<SignerPool>,
    pair: JwtKeyPair,
    jwt: &JwtConfig,
    trust_domain: &str,
) -> CliResult<Arc<JwtAuthority>> {
    let signer = pool
        .extra_signer(0)
        .ok_or("the signing pool has no JWT key")?;
    let signer = JwtSigner::new(Arc::new(signer))?;
    let previous = match pair.previous.map(PublicJwtKey::new).transpose() {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "the previous JWT key cannot be published; leaving it out of the JWT bundle");
            None
        }
    };
    let kid = signer.key().kid.clone();
    let alg = signer.alg();
    let auth = JwtAuthority::new(
        signer,
        previous,
        trust_domain,
        jwt.lifetime,
        SystemTime::now(),
    );
    let id = SpiffeId::parse(&format!("spiffe://{trust_domain}/hsmca/self-test"))?;
    let audience = "hsmca-self-test".to_string();
    let token = auth
        .sign_unmetered(&id, std::slice::from_ref(&audience))
        .await?;
    auth.validate(&token, &audience).map_err(|e| {
        format!(
            "start-up self-test: a JWT-SVID signed by the token's JWT key failed to validate: {e}"
        )
    })?;
    tracing::info!(
        alg = alg.name(),
        kid = %kid,
        label = %jwt.key_label,
        lifetime = ?jwt.lifetime,
        "JWT-SVID key ready"
    );
    Ok(auth)
}
