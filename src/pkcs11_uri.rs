//! RFC 7512 PKCS#11 URIs (`pkcs11:token=hsmca;object=ca-key;id=%01`), the way
//! step-ca, OpenSSL and p11-kit name a token and a key, so one string can be
//! copied between those tools and hsmca.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UriError {
    #[error("a PKCS#11 URI starts with \"pkcs11:\"")]
    Scheme,
    #[error("bad percent-encoding in attribute {0}")]
    Encoding(String),
    #[error("attribute {0} appears twice")]
    Duplicate(String),
    #[error("attribute {0} is not supported here (use token, object, id, type, module-path)")]
    Unsupported(String),
    #[error("type={0} cannot name a CA signing key; use type=private or leave it out")]
    WrongType(String),
    #[error(
        "a PIN in the URI ({0}) would put the PIN in the config; use token.pin_file or a credential"
    )]
    PinInUri(&'static str),
    #[error("malformed attribute {0:?}: expected name=value")]
    Malformed(String),
}

/// The attributes hsmca uses; the values are already percent-decoded.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pkcs11Uri {
    pub token: Option<String>,
    pub object: Option<String>,
    pub id: Option<Vec<u8>>,
    pub module_path: Option<PathBuf>,
}

impl Pkcs11Uri {
    pub fn parse(input: &str) -> Result<Self, UriError> {
        let rest = input.strip_prefix("pkcs11:").ok_or(UriError::Scheme)?;
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        let mut uri = Pkcs11Uri::default();
        let mut token_type: Option<String> = None;
        for attr in path.split(';').filter(|a| !a.is_empty()) {
            let (name, value) = attr
                .split_once('=')
                .ok_or_else(|| UriError::Malformed(attr.to_owned()))?;
            let bytes = pct_decode(value).ok_or_else(|| UriError::Encoding(name.to_owned()))?;
            let text = || {
                String::from_utf8(bytes.clone()).map_err(|_| UriError::Encoding(name.to_owned()))
            };
            match name {
                "token" => set(&mut uri.token, text()?, name)?,
                "object" => set(&mut uri.object, text()?, name)?,
                "id" => set(&mut uri.id, bytes, name)?,
                "type" => set(&mut token_type, text()?, name)?,
                other => return Err(UriError::Unsupported(other.to_owned())),
            }
        }
        for attr in query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .filter(|a| !a.is_empty())
        {
            let (name, value) = attr
                .split_once('=')
                .ok_or_else(|| UriError::Malformed(attr.to_owned()))?;
            match name {
                "module-path" => {
                    let bytes =
                        pct_decode(value).ok_or_else(|| UriError::Encoding(name.to_owned()))?;
                    let path = String::from_utf8(bytes)
                        .map_err(|_| UriError::Encoding(name.to_owned()))?;
                    set(&mut uri.module_path, PathBuf::from(path), name)?;
                }
                "pin-value" => return Err(UriError::PinInUri("pin-value")),
                "pin-source" => return Err(UriError::PinInUri("pin-source")),
                other => return Err(UriError::Unsupported(other.to_owned())),
            }
        }
        if let Some(t) = token_type
            && t != "private"
        {
            return Err(UriError::WrongType(t));
        }
        Ok(uri)
    }
}

fn set<T>(slot: &mut Option<T>, value: T, name: &str) -> Result<(), UriError> {
    if slot.is_some() {
        return Err(UriError::Duplicate(name.to_owned()));
    }
    *slot = Some(value);
    Ok(())
}

fn pct_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hi = (bytes.next()? as char).to_digit(16)?;
            let lo = (bytes.next()? as char).to_digit(16)?;
            out.push((hi * 16 + lo) as u8);
        } else {
            out.push(b);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_common_form() {
        let u = Pkcs11Uri::parse(
            "pkcs11:token=hsmca;object=ca%20key;id=%01%ab;type=private?module-path=/usr/lib/softhsm/libsofthsm2.so",
        )
        .unwrap();
        assert_eq!(u.token.as_deref(), Some("hsmca"));
        assert_eq!(u.object.as_deref(), Some("ca key"));
        assert_eq!(u.id, Some(vec![0x01, 0xab]));
        assert_eq!(
            u.module_path,
            Some(PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"))
        );
    }

    #[test]
    fn refuses_what_it_cannot_honour() {
        assert_eq!(Pkcs11Uri::parse("file:x"), Err(UriError::Scheme));
        assert_eq!(
            Pkcs11Uri::parse("pkcs11:token=a;token=b"),
            Err(UriError::Duplicate("token".into()))
        );
        assert_eq!(
            Pkcs11Uri::parse("pkcs11:token=a?pin-value=1234"),
            Err(UriError::PinInUri("pin-value"))
        );
        assert_eq!(
            Pkcs11Uri::parse("pkcs11:token=a;type=cert"),
            Err(UriError::WrongType("cert".into()))
        );
        assert_eq!(
            Pkcs11Uri::parse("pkcs11:id=%zz"),
            Err(UriError::Encoding("id".into()))
        );
        assert_eq!(
            Pkcs11Uri::parse("pkcs11:slot-id=3"),
            Err(UriError::Unsupported("slot-id".into()))
        );
        assert_eq!(
            Pkcs11Uri::parse("pkcs11:token"),
            Err(UriError::Malformed("token".into()))
        );
    }
}
