//! Where the token's user PIN comes from: a file only its owner can read, a
//! systemd credential (`LoadCredential=`), or the `HSMCA_PIN` environment
//! variable. Never argv, and never a log line: the PIN is a [`SecretString`]
//! from the moment it is read, and no error below carries its value.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use secrecy::SecretString;

use crate::config::TokenConfig;

/// Environment variable that may hold the PIN when no file is configured.
pub const PIN_ENV: &str = "HSMCA_PIN";

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("cannot read PIN file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "PIN file {path} has mode {mode:04o}: its group or other users can access it, so it is not used; \
         run: chmod 600 {path} (and make the daemon's user its owner)"
    )]
    Permissions { path: String, mode: u32 },
    #[error("the PIN from {0} is empty")]
    Empty(String),
    #[error("the PIN from {0} is not valid UTF-8")]
    NotUtf8(String),
    #[error(
        "no PIN source: set token.pin_file, provide systemd credential {credential:?}, or set HSMCA_PIN"
    )]
    Missing { credential: String },
}

/// Reads the PIN from the first configured source, in this order:
/// `token.pin_file`, the systemd credential `token.pin_credential`, `HSMCA_PIN`.
pub fn load_pin(token: &TokenConfig) -> Result<SecretString, PinError> {
    load_pin_from(token, |k| std::env::var(k).ok())
}

pub fn load_pin_from(
    token: &TokenConfig,
    env: impl Fn(&str) -> Option<String>,
) -> Result<SecretString, PinError> {
    match pin_source_from(token, &env)? {
        PinSource::File(path) => read_pin_file(&path, true),
        // systemd already restricts credentials to the service; their mode
        // is not the operator's to choose.
        PinSource::Credential(path) => read_pin_file(&path, false),
        PinSource::Env => finish(env(PIN_ENV).unwrap_or_default().into_bytes(), PIN_ENV),
    }
}

/// Where [`load_pin`] reads the PIN from (for `hsmca config check` to say).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinSource {
    /// `token.pin_file`.
    File(PathBuf),
    /// The systemd credential `token.pin_credential` in `$CREDENTIALS_DIRECTORY`.
    Credential(PathBuf),
    /// The `HSMCA_PIN` environment variable.
    Env,
}

impl std::fmt::Display for PinSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(p) => write!(f, "file {}", p.display()),
            Self::Credential(p) => write!(f, "systemd credential {}", p.display()),
            Self::Env => write!(f, "environment variable {PIN_ENV}"),
        }
    }
}

/// The source [`load_pin`] would read, without reading it.
pub fn pin_source(token: &TokenConfig) -> Result<PinSource, PinError> {
    pin_source_from(token, &|k| std::env::var(k).ok())
}

fn pin_source_from(
    token: &TokenConfig,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<PinSource, PinError> {
    if let Some(path) = &token.pin_file {
        return Ok(PinSource::File(path.clone()));
    }
    if let Some(dir) = env("CREDENTIALS_DIRECTORY") {
        let path = Path::new(&dir).join(&token.pin_credential);
        if path.exists() {
            return Ok(PinSource::Credential(path));
        }
    }
    if env(PIN_ENV).is_some() {
        return Ok(PinSource::Env);
    }
    Err(PinError::Missing {
        credential: token.pin_credential.clone(),
    })
}

fn read_pin_file(path: &Path, check_mode: bool) -> Result<SecretString, PinError> {
    let shown = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|source| PinError::Read {
        path: shown.clone(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if check_mode && mode & 0o077 != 0 {
        return Err(PinError::Permissions { path: shown, mode });
    }
    let bytes = std::fs::read(path).map_err(|source| PinError::Read {
        path: shown.clone(),
        source,
    })?;
    finish(bytes, &shown)
}

fn finish(mut bytes: Vec<u8>, source: &str) -> Result<SecretString, PinError> {
    // One trailing newline is what `echo` and editors leave; it is not part
    // of the PIN.
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
    let result = match std::str::from_utf8(&bytes) {
        Ok("") => Err(PinError::Empty(source.to_owned())),
        Ok(s) => Ok(SecretString::from(s.to_owned())),
        Err(_) => Err(PinError::NotUtf8(source.to_owned())),
    };
    zeroize::Zeroize::zeroize(&mut bytes);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use std::collections::HashMap;

    fn token(pin_file: Option<&Path>) -> TokenConfig {
        TokenConfig {
            module: None,
            uri: None,
            token_label: Some("t".into()),
            key_label: Some("k".into()),
            key_id: None,
            pin_file: pin_file.map(Path::to_owned),
            pin_credential: "hsmca-pin".into(),
            sessions: 1,
            queue_depth: 1,
        }
    }

    #[test]
    fn file_pin_strips_newline_and_requires_0600() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pin");
        std::fs::write(&p, "1234\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_pin_from(&token(Some(&p)), |_| None).unwrap_err();
        assert!(matches!(err, PinError::Permissions { mode: 0o644, .. }));
        assert!(!err.to_string().contains("1234"));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let pin = load_pin_from(&token(Some(&p)), |_| None).unwrap();
        assert_eq!(pin.expose_secret(), "1234");
    }

    #[test]
    fn credential_then_env() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hsmca-pin"), "from-cred").unwrap();
        let mut env = HashMap::new();
        env.insert(
            "CREDENTIALS_DIRECTORY".to_string(),
            dir.path().display().to_string(),
        );
        env.insert(PIN_ENV.to_string(), "from-env".to_string());
        let pin = load_pin_from(&token(None), |k| env.get(k).cloned()).unwrap();
        assert_eq!(pin.expose_secret(), "from-cred");
        env.remove("CREDENTIALS_DIRECTORY");
        let pin = load_pin_from(&token(None), |k| env.get(k).cloned()).unwrap();
        assert_eq!(pin.expose_secret(), "from-env");
        env.clear();
        assert!(matches!(
            load_pin_from(&token(None), |k| env.get(k).cloned()),
            Err(PinError::Missing { .. })
        ));
        env.insert(PIN_ENV.to_string(), "\n".to_string());
        assert!(matches!(
            load_pin_from(&token(None), |k| env.get(k).cloned()),
            Err(PinError::Empty(_))
        ));
    }
}
