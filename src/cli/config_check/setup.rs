//! `hsmca config check --setup`: the light check behind the service's
//! `ExecCondition=`.

use std::path::Path;

use crate::{
    cli::CliResult,
    config::{Config, ConfigError},
};

/// `--setup`: only what an operator has to do once before the first start.
/// Exits 1 (an error) with the next steps when something is missing, so
/// `ExecCondition=` skips the start; anything else is `serve`'s to report.
pub(super) fn setup(path: &Path) -> CliResult {
    let missing = match Config::load(path) {
        Err(ConfigError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Some(format!("there is no config file {}", path.display()))
        }
        Err(e) => {
            // Set up, but wrong: `serve` fails with this error and systemd
            // reports the unit failed, which is what an operator should see.
            eprintln!("hsmca: {e}");
            return Ok(());
        }
        // The PIN file is the unit's own ConditionPathExists=.
        Ok(cfg) if !cfg.ca.certificate.exists() => Some(format!(
            "there is no CA certificate {} (hsmca init makes it)",
            cfg.ca.certificate.display()
        )),
        Ok(_) => None,
    };
    let Some(missing) = missing else {
        println!("hsmca is set up ({}); starting", path.display());
        return Ok(());
    };
    let config = path.display();
    let as_daemon = "systemd-run --pipe --wait -p User=hsmca -p StateDirectory=hsmca \
                     -p LoadCredential=hsmca-pin:/etc/hsmca/pin";
    println!(
        "hsmca is installed but not set up yet: {missing}.\n\
         Next steps, as root (README, \"Installing the package\"):\n  \
         1. edit {config}: the token (token.module, token.token_label, token.key_label), ca.subject and the policy rules\n  \
         2. put the token's user PIN in /etc/hsmca/pin (root:root, mode 0600)\n  \
         3. make the CA key and certificate:\n     \
            {as_daemon} /usr/bin/hsmca init --config {config}\n  \
         4. check everything:\n     \
            {as_daemon} /usr/bin/hsmca config check --config {config}\n  \
         5. systemctl start hsmca"
    );
    Err("not set up yet; the start is skipped".into())
}
