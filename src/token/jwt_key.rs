//! The JWT-SVID signing key: a second key pair in the token, under its own
//! label, generated like the CA key (sensitive, non-extractable, sign
//! only). A rotation makes a new pair and relabels the old one
//! `<label>.previous`, whose public key the daemon keeps publishing for one
//! JWT lifetime so that tokens it signed still validate.

use cryptoki::object::{Attribute, ObjectClass};
use spki::SubjectPublicKeyInfoOwned;

use super::{CaKey, KeySelector, Token, TokenError, keygen};
use crate::config::KeyType;

/// The JWT key pairs as found in the token.
#[derive(Debug, Clone)]
pub struct JwtKeyPair {
    pub current: CaKey,
    /// The public half of the pair a rotation replaced, if it is still there.
    pub previous: Option<SubjectPublicKeyInfoOwned>,
}

fn by_label(label: &str) -> KeySelector {
    KeySelector {
        label: Some(label.to_owned()),
        id: None,
    }
}

/// A failure to find or use the JWT-SVID key pair, told apart from the CA
/// key's own failures (start-up and `config check` name the right key).
#[derive(Debug, thiserror::Error)]
#[error("the JWT-SVID key {label:?}: {source}")]
pub struct JwtKeyError {
    pub label: String,
    #[source]
    pub source: TokenError,
}

/// Finds the JWT key (exactly one pair labelled `label`, of type `kt`) and
/// the previous one (labelled `previous_label`, of any type), refusing the
/// CA key.
pub fn find_jwt_key(
    token: &Token,
    label: &str,
    previous_label: &str,
    kt: KeyType,
    ca_key_id: &[u8],
) -> Result<JwtKeyPair, TokenError> {
    let current = match token.find_ca_key(&by_label(label), kt) {
        Ok(k) => k,
        Err(TokenError::KeyNotFound(_)) => {
            return Err(TokenError::JwtKeyNotFound(label.to_owned()));
        }
        Err(e) => return Err(e),
    };
    if current.id == ca_key_id {
        return Err(TokenError::KeyUnsuitable {
            key: format!("label={label:?}"),
            problem:
                "the JWT key has the CA key's CKA_ID; JWT-SVIDs are never signed with the CA key"
                    .into(),
        });
    }
    let previous = find_any_type(token, previous_label)?.map(|k| k.spki);
    Ok(JwtKeyPair { current, previous })
}

/// The pair labelled `label` whatever its key type, if there is one.
fn find_any_type(token: &Token, label: &str) -> Result<Option<CaKey>, TokenError> {
    let sel = by_label(label);
    let mut last = None;
    for kt in [
        KeyType::P256,
        KeyType::P384,
        KeyType::Rsa2048,
        KeyType::Rsa3072,
        KeyType::Rsa4096,
    ] {
        match token.find_ca_key(&sel, kt) {
            Ok(k) => return Ok(Some(k)),
            Err(TokenError::KeyNotFound(_)) => return Ok(None),
            Err(e @ TokenError::KeyUnsuitable { .. }) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    last.map_or(Ok(None), Err)
}

/// Makes the JWT key pair unless one is already there. Returns the key and
/// whether it was generated.
pub fn ensure_jwt_key(
    token: &Token,
    label: &str,
    kt: KeyType,
) -> Result<(CaKey, bool), TokenError> {
    match token.find_ca_key(&by_label(label), kt) {
        Ok(k) => Ok((k, false)),
        Err(TokenError::KeyNotFound(_)) => Ok((
            keygen::generate_ca_key(token, &by_label(label), kt, false)?,
            true,
        )),
        Err(e) => Err(e),
    }
}

/// Replaces the JWT key pair: a new pair is generated under a temporary
/// label, the current pair becomes `previous_label` (an older previous pair
/// is destroyed), and the new pair takes `label`. Each step leaves a state
/// the daemon either starts from or refuses with a clear message.
pub fn rotate_jwt_key(
    token: &Token,
    label: &str,
    previous_label: &str,
    kt: KeyType,
) -> Result<(CaKey, Option<CaKey>), TokenError> {
    let old = match find_any_type(token, label)? {
        Some(k) => k,
        None => return Ok((ensure_jwt_key(token, label, kt)?.0, None)),
    };
    let next_label = format!("{label}.next");
    // `force` clears what an interrupted rotation may have left.
    let new = keygen::generate_ca_key(token, &by_label(&next_label), kt, true)?;
    let session = token.session()?;
    for o in find_labelled(token, previous_label)? {
        session.destroy_object(o).map_err(TokenError::from_ck)?;
    }
    relabel(token, &old.id, previous_label)?;
    relabel(token, &new.id, label)?;
    let current = token.find_ca_key(&by_label(label), kt)?;
    Ok((current, Some(old)))
}

fn find_labelled(
    token: &Token,
    label: &str,
) -> Result<Vec<cryptoki::object::ObjectHandle>, TokenError> {
    let session = token.session()?;
    let mut all = Vec::new();
    for class in [ObjectClass::PRIVATE_KEY, ObjectClass::PUBLIC_KEY] {
        all.extend(
            session
                .find_objects(&[
                    Attribute::Class(class),
                    Attribute::Label(label.as_bytes().to_vec()),
                ])
                .map_err(TokenError::from_ck)?,
        );
    }
    Ok(all)
}

/// Gives both halves of the pair with this CKA_ID a new label.
fn relabel(token: &Token, id: &[u8], label: &str) -> Result<(), TokenError> {
    let session = token.session()?;
    for class in [ObjectClass::PRIVATE_KEY, ObjectClass::PUBLIC_KEY] {
        for o in session
            .find_objects(&[Attribute::Class(class), Attribute::Id(id.to_vec())])
            .map_err(TokenError::from_ck)?
        {
            session
                .update_attributes(o, &[Attribute::Label(label.as_bytes().to_vec())])
                .map_err(TokenError::from_ck)?;
        }
    }
    Ok(())
}
