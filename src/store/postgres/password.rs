//! The PostgreSQL password: from `state.database_password_file` (which only
//! its owner may read) or the systemd credential
//! `state.database_password_credential`; none when neither exists (peer or
//! trust authentication over a Unix socket). Never argv, never a log line:
//! it is a [`SecretString`] from the moment it is read, and no error
//! carries it.

use std::{os::unix::fs::PermissionsExt, path::Path};

use secrecy::SecretString;

use super::unavailable;
use crate::{config::StateConfig, store::StoreError};

pub(super) fn load(state: &StateConfig) -> Result<Option<SecretString>, StoreError> {
    if let Some(path) = &state.database_password_file {
        return read(path, true, "state.database_password_file").map(Some);
    }
    if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
        let path = Path::new(&dir).join(&state.database_password_credential);
        if path.exists() {
            return read(&path, false, "state.database_password_credential").map(Some);
        }
    }
    Ok(None)
}

/// Where the password was taken from, for the message of a refused login
/// (the password itself never appears).
pub(super) fn hint(state: &StateConfig) -> String {
    if let Some(path) = &state.database_password_file {
        return format!(
            "; the password was read from state.database_password_file ({})",
            path.display()
        );
    }
    if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
        let path = Path::new(&dir).join(&state.database_password_credential);
        if path.exists() {
            return format!(
                "; the password was read from the systemd credential {:?} (state.database_password_credential)",
                state.database_password_credential
            );
        }
    }
    "; no password was given: set state.database_password_file, or the systemd credential named by state.database_password_credential".to_owned()
}

fn read(path: &Path, check_mode: bool, key: &str) -> Result<SecretString, StoreError> {
    let shown = path.display();
    let meta = std::fs::metadata(path)
        .map_err(|e| unavailable(format!("{key}: cannot read {shown}: {e}")))?;
    let mode = meta.permissions().mode() & 0o777;
    if check_mode && mode & 0o077 != 0 {
        return Err(unavailable(format!(
            "{key}: {shown} has mode {mode:04o}: its group or other users can read it, so it \
             is not used; run: chmod 600 {shown}"
        )));
    }
    let bytes =
        std::fs::read(path).map_err(|e| unavailable(format!("{key}: cannot read {shown}: {e}")))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| unavailable(format!("{key}: {shown} is not UTF-8 text")))?;
    let pw = text.trim_end_matches(['\n', '\r']);
    if pw.is_empty() {
        return Err(unavailable(format!("{key}: {shown} is empty")));
    }
    Ok(SecretString::from(pw.to_owned()))
}
