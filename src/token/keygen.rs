//! Generating the CA key pair inside the token. The private half is created
//! sensitive and non-extractable and can only sign: it never exists outside
//! the token, and no later attribute change can make it leave.

use cryptoki::{
    mechanism::Mechanism,
    object::{Attribute, ObjectClass},
};

use super::{CaKey, KeySelector, Token, TokenError};
use crate::config::KeyType;

/// Label used when the config names the key only by id.
pub const DEFAULT_KEY_LABEL: &str = "hsmca-ca";

/// Generates the CA key pair. An existing key with the same name is an error
/// unless `force`, in which case every object matching the name is destroyed
/// first.
pub fn generate_ca_key(
    token: &Token,
    sel: &KeySelector,
    kt: KeyType,
    force: bool,
) -> Result<CaKey, TokenError> {
    let session = token.session()?;
    let mut existing = Vec::new();
    for class in [ObjectClass::PRIVATE_KEY, ObjectClass::PUBLIC_KEY] {
        existing.extend(
            session
                .find_objects(&sel.template(class))
                .map_err(TokenError::from_ck)?,
        );
    }
    if !existing.is_empty() {
        if !force {
            return Err(TokenError::KeyExists(sel.to_string()));
        }
        for o in existing {
            session.destroy_object(o).map_err(TokenError::from_ck)?;
        }
    }

    let label = sel
        .label
        .clone()
        .unwrap_or_else(|| DEFAULT_KEY_LABEL.to_owned())
        .into_bytes();
    let id = match &sel.id {
        Some(id) => id.clone(),
        None => {
            // Pairs the two halves; the label stays the lookup name.
            let mut id = vec![0u8; 8];
            getrandom::fill(&mut id).map_err(|e| TokenError::Other(e.to_string()))?;
            id
        }
    };

    let mut public = vec![
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::Verify(true),
        Attribute::Encrypt(false),
        Attribute::Wrap(false),
        Attribute::Label(label.clone()),
        Attribute::Id(id.clone()),
    ];
    let private = vec![
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        Attribute::Decrypt(false),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
        Attribute::Label(label),
        Attribute::Id(id.clone()),
    ];
    let mechanism = match (super::pubkey::ec_params(kt), kt.rsa_bits()) {
        (Some(params), _) => {
            public.push(Attribute::EcParams(params));
            Mechanism::EccKeyPairGen
        }
        (None, Some(bits)) => {
            public.push(Attribute::ModulusBits(bits.into()));
            public.push(Attribute::PublicExponent(vec![0x01, 0x00, 0x01]));
            Mechanism::RsaPkcsKeyPairGen
        }
        (None, None) => return Err(TokenError::Other(format!("cannot generate {}", kt.name()))),
    };
    session
        .generate_key_pair(&mechanism, &public, &private)
        .map_err(TokenError::from_ck)?;

    let found = KeySelector {
        label: sel.label.clone(),
        id: Some(id),
    };
    token.find_ca_key(&found, kt)
}
