//! The report of `hsmca config check`: one line per check, printed as it
//! comes (so a step that hangs shows where), or one JSON object.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use serde::Serialize;

use crate::cli::CliResult;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Failed,
    Skipped,
}

/// One line of the report.
#[derive(Debug, Serialize)]
pub struct Check {
    /// A stable name: config, pin, module, token, login, key, certificate,
    /// signature, socket, store.
    pub check: &'static str,
    pub status: Status,
    /// What was found, what is wrong, or why the check did not run.
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub ok: bool,
    pub config: PathBuf,
    pub checks: Vec<Check>,
}

/// Every check in order, with the label a person reads.
pub(super) const CHECKS: [(&str, &str); 11] = [
    ("config", "config"),
    ("pin", "PIN source"),
    ("module", "PKCS#11 module"),
    ("token", "token"),
    ("login", "login"),
    ("key", "CA key"),
    ("jwt-key", "JWT-SVID key"),
    ("certificate", "CA certificate"),
    ("signature", "test signature"),
    ("socket", "socket directory"),
    ("store", "store"),
];

fn label(check: &str) -> &'static str {
    CHECKS
        .iter()
        .find(|(c, _)| *c == check)
        .map_or("?", |(_, l)| l)
}

/// Collects the lines, printing each as it comes (text mode) so that a
/// step that hangs (an HSM that does not answer) shows where.
pub(super) struct Reporter {
    pub(super) json: bool,
    pub(super) checks: Vec<Check>,
}

impl Reporter {
    pub(super) fn push(
        &mut self,
        check: &'static str,
        status: Status,
        detail: String,
        fix: Option<String>,
    ) {
        if !self.json {
            let mark = match status {
                Status::Ok => "✓",
                Status::Failed => "✗",
                Status::Skipped => "–",
            };
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{mark} {:<16} {detail}", label(check));
            if let Some(fix) = &fix {
                let _ = writeln!(out, "  {:<16} fix: {fix}", "");
            }
            let _ = out.flush();
        }
        self.checks.push(Check {
            check,
            status,
            detail,
            fix,
        });
    }

    pub(super) fn ok(&mut self, check: &'static str, detail: impl Into<String>) {
        self.push(check, Status::Ok, detail.into(), None);
    }

    pub(super) fn fail(
        &mut self,
        check: &'static str,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.push(check, Status::Failed, detail.into(), Some(fix.into()));
    }

    pub(super) fn skip(&mut self, check: &'static str, why: &str) {
        self.push(check, Status::Skipped, format!("not checked: {why}"), None);
    }

    /// Skips every check from `first` up to (not including) `until`.
    pub(super) fn skip_range(&mut self, first: &str, until: Option<&str>, why: &str) {
        let start = CHECKS.iter().position(|(c, _)| *c == first).unwrap_or(0);
        let end = until
            .and_then(|u| CHECKS.iter().position(|(c, _)| *c == u))
            .unwrap_or(CHECKS.len());
        for (c, _) in &CHECKS[start..end] {
            self.skip(c, why);
        }
    }

    pub(super) fn finish(self, config: &Path) -> CliResult {
        let failed = self
            .checks
            .iter()
            .filter(|c| c.status == Status::Failed)
            .count();
        if self.json {
            let report = Report {
                ok: failed == 0,
                config: config.to_owned(),
                checks: self.checks,
            };
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else if failed == 0 {
            println!("all checks passed: `hsmca serve` can start with this configuration");
        }
        if failed == 0 {
            Ok(())
        } else {
            Err(format!(
                "config check: {failed} check{} failed",
                if failed == 1 { "" } else { "s" }
            )
            .into())
        }
    }
}
