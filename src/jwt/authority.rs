//! The JWT side of the workload endpoint, ready for the service to call:
//! JWT-SVIDs signed for a caller's SPIFFE IDs, the trust domain's JWT
//! bundle as a value that changes (streams watch it), and validation
//! against the keys that bundle holds.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use tokio::sync::watch;

use super::{JwtError, JwtKeys, JwtSigner, PublicJwtKey, Validated, jwks, validate::ValidateError};
use crate::spiffe_id::SpiffeId;

/// The JWT bundle as published: the JWKS bytes and the keys in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtBundle {
    pub keys: Vec<PublicJwtKey>,
    pub jwks: Vec<u8>,
}

impl JwtBundle {
    fn of(keys: Vec<PublicJwtKey>, refresh_hint: u64) -> Arc<Self> {
        let jwks = jwks(&keys, Some(refresh_hint));
        Arc::new(Self { keys, jwks })
    }
}

pub struct JwtAuthority {
    signer: JwtSigner,
    trust_domain: String,
    lifetime: Duration,
    keys: Mutex<JwtKeys>,
    bundle: watch::Sender<Arc<JwtBundle>>,
}

impl JwtAuthority {
    /// `previous` is the key a rotation replaced: it stays in the bundle
    /// for one `lifetime` from `now`, the longest a token it signed before
    /// this start can still be valid.
    pub fn new(
        signer: JwtSigner,
        previous: Option<PublicJwtKey>,
        trust_domain: &str,
        lifetime: Duration,
        now: SystemTime,
    ) -> Arc<Self> {
        let current = signer.key().clone();
        let keys = match previous {
            Some(p) => JwtKeys::rotated(current, p, now + lifetime),
            None => JwtKeys::new(current),
        };
        let (bundle, _) = watch::channel(JwtBundle::of(
            keys.published(now),
            lifetime.as_secs().max(1),
        ));
        Arc::new(Self {
            signer,
            trust_domain: trust_domain.to_owned(),
            lifetime,
            keys: Mutex::new(keys),
            bundle,
        })
    }

    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// One JWT-SVID per ID, for `audience`, in the order given.
    pub async fn mint(
        &self,
        ids: &[SpiffeId],
        audience: &[String],
    ) -> Result<Vec<String>, JwtError> {
        let mut tokens = Vec::with_capacity(ids.len());
        for id in ids {
            let token = self
                .signer
                .sign(id, audience, SystemTime::now(), self.lifetime)
                .await?;
            crate::metrics::metrics().jwt_svids_signed.inc();
            tokens.push(token);
        }
        Ok(tokens)
    }

    /// One token that is not counted as issued (the start-up self-test).
    pub async fn sign_unmetered(
        &self,
        id: &SpiffeId,
        audience: &[String],
    ) -> Result<String, JwtError> {
        self.signer
            .sign(id, audience, SystemTime::now(), self.lifetime)
            .await
    }

    /// Checks a token against the keys of the bundle as published now.
    pub fn validate(&self, token: &str, audience: &str) -> Result<Validated, ValidateError> {
        let bundle = self.bundle.borrow().clone();
        super::validate(
            token,
            audience,
            &bundle.keys,
            &self.trust_domain,
            SystemTime::now(),
        )
    }

    /// The bundle now, and every change after (FetchJWTBundles streams).
    pub fn bundle(&self) -> watch::Receiver<Arc<JwtBundle>> {
        self.bundle.subscribe()
    }

    /// Publishes the bundle again whenever it changes by itself (the
    /// previous key leaving after its lifetime). Runs until that has
    /// happened; spawn it beside the service.
    pub async fn run(self: Arc<Self>) {
        loop {
            let next = self.keys_now().next_change(SystemTime::now());
            let Some(at) = next else { return };
            let wait = at
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            tokio::time::sleep(wait).await;
            self.republish(SystemTime::now().max(at));
        }
    }

    fn keys_now(&self) -> JwtKeys {
        self.keys
            .lock()
            .map(|k| k.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    fn republish(&self, now: SystemTime) {
        let keys = self.keys_now();
        let fresh = JwtBundle::of(keys.published(now), self.lifetime.as_secs().max(1));
        self.bundle.send_if_modified(|b| {
            let changed = **b != *fresh;
            if changed {
                tracing::info!(keys = fresh.keys.len(), "JWT bundle changed");
                *b = fresh.clone();
            }
            changed
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::test_signer::SoftP256;

    #[tokio::test]
    async fn previous_key_leaves_the_bundle_after_one_lifetime() {
        let previous = JwtSigner::new(SoftP256::new(1)).unwrap();
        let current = JwtSigner::new(SoftP256::new(2)).unwrap();
        let id = SpiffeId::parse("spiffe://example.org/w").unwrap();
        let aud = vec!["db".to_string()];
        let old_token = previous
            .sign(&id, &aud, SystemTime::now(), Duration::from_secs(60))
            .await
            .unwrap();
        let auth = JwtAuthority::new(
            current,
            Some(previous.key().clone()),
            "example.org",
            Duration::from_millis(1500),
            SystemTime::now(),
        );
        let mut rx = auth.bundle();
        assert_eq!(rx.borrow_and_update().keys.len(), 2);
        // A token of the previous key still validates.
        auth.validate(&old_token, "db").unwrap();
        let fresh = auth.mint(std::slice::from_ref(&id), &aud).await.unwrap();
        auth.validate(&fresh[0], "db").unwrap();
        // One lifetime later the previous key is gone.
        auth.republish(SystemTime::now() + Duration::from_secs(2));
        rx.changed().await.unwrap();
        let b = rx.borrow_and_update().clone();
        assert_eq!(b.keys.len(), 1);
        assert_eq!(b.keys[0].kid, auth.signer.key().kid);
        assert!(matches!(
            auth.validate(&old_token, "db"),
            Err(ValidateError::UnknownKey(_))
        ));
    }
}
