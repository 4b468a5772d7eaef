//! Which public keys a JWT bundle holds. After a rotation of the JWT key the
//! previous key stays published for one JWT lifetime, so every token it
//! signed can still be validated until it expires; then it leaves the
//! bundle.

use std::time::SystemTime;

use super::PublicJwtKey;

/// The keys JWT-SVIDs of this trust domain are accepted from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtKeys {
    /// The key that signs now.
    pub current: PublicJwtKey,
    /// The key that signed before the last rotation, and until when its
    /// tokens may still be valid.
    pub previous: Option<(PublicJwtKey, SystemTime)>,
}

impl JwtKeys {
    pub fn new(current: PublicJwtKey) -> Self {
        Self {
            current,
            previous: None,
        }
    }

    /// `current` with `previous` kept until `until`.
    pub fn rotated(current: PublicJwtKey, previous: PublicJwtKey, until: SystemTime) -> Self {
        // The same key twice (a rotation that was not one) publishes once.
        let previous = (previous.kid != current.kid).then_some((previous, until));
        Self { current, previous }
    }

    /// The keys valid at `now`, the signing key first.
    pub fn published(&self, now: SystemTime) -> Vec<PublicJwtKey> {
        let mut keys = vec![self.current.clone()];
        if let Some((prev, until)) = &self.previous
            && now < *until
        {
            keys.push(prev.clone());
        }
        keys
    }

    /// When the published set changes by itself next (the previous key
    /// leaving), if it does.
    pub fn next_change(&self, now: SystemTime) -> Option<SystemTime> {
        self.previous
            .as_ref()
            .map(|(_, until)| *until)
            .filter(|until| *until > now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use der::Decode;
    use spki::{EncodePublicKey, SubjectPublicKeyInfoOwned};
    use std::time::Duration;

    fn key(seed: u8) -> PublicJwtKey {
        let k = p256::SecretKey::from_slice(&[seed; 32])
            .unwrap()
            .public_key();
        let der = k.to_public_key_der().unwrap();
        PublicJwtKey::new(SubjectPublicKeyInfoOwned::from_der(der.as_bytes()).unwrap()).unwrap()
    }

    #[test]
    fn previous_key_is_published_for_one_lifetime() {
        let t0 = crate::time::from_unix(1_000_000);
        let until = t0 + Duration::from_secs(300);
        let keys = JwtKeys::rotated(key(1), key(2), until);
        let at = |s| keys.published(t0 + Duration::from_secs(s));
        assert_eq!(at(0).len(), 2);
        assert_eq!(at(0)[0].kid, key(1).kid, "the signing key comes first");
        assert_eq!(at(299).len(), 2);
        assert_eq!(at(300).len(), 1);
        assert_eq!(keys.next_change(t0), Some(until));
        assert_eq!(keys.next_change(until), None);
        assert_eq!(JwtKeys::new(key(1)).next_change(t0), None);
    }

    #[test]
    fn same_key_twice_is_not_a_rotation() {
        let keys = JwtKeys::rotated(key(1), key(1), SystemTime::now() + Duration::from_secs(60));
        assert!(keys.previous.is_none());
        assert_eq!(keys.published(SystemTime::now()).len(), 1);
    }
}
