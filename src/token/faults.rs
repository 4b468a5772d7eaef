//! A **test hook** for the token's failure paths. It does nothing unless the
//! daemon was started with `HSMCA_TEST_FAULTS=/path/to/control-file` in its
//! environment; then it makes chosen PKCS#11 calls fail with chosen CKR_*
//! values, while SoftHSM2 (or any real module) still does every call that is
//! not failed, so signatures stay real.
//!
//! Why a seam in the pool and not a PKCS#11 shim module: a shim would have to
//! export C functions, and this crate forbids `unsafe`. The seam sits right in
//! front of each cryptoki call the signer makes ([`Op`]), so the code under
//! test is the code that runs in production, minus one branch on a `None`.
//!
//! The control file is re-read (at most every [`RELOAD`]) and each new
//! content replaces the previous plan. One command a line, `#` comments:
//!
//! ```text
//! fault sign SESSION_HANDLE_INVALID count=1   # the next C_Sign fails once
//! fault * DEVICE_ERROR for=3s                 # every call fails for 3 s
//! stall sign 30s count=100                    # the next 100 C_Sign hang 30 s first
//! reset-sessions                              # kill every real session once
//! ```
//!
//! `stall` makes the call wait before it is made (a wedged token, for the
//! systemd watchdog); it then runs normally.
//!
//! `reset-sessions` makes SoftHSM2 itself invalidate every session under the
//! signing threads and log the application out: the state C_CloseAllSessions
//! leaves behind. cryptoki 0.12 has no safe C_CloseAllSessions and a second
//! process cannot touch this process's SoftHSM2 sessions, so the pool does it
//! in-process with C_Finalize + C_Initialize while no other call is in flight:
//! afterwards the library is initialised again, every old session handle is
//! dead and the errors the workers then see come from SoftHSM2, not from here.

use std::{
    path::PathBuf,
    sync::Mutex,
    time::{Duration, Instant},
};

use cryptoki::{
    context::Function,
    error::{Error as CkError, RvError},
};

/// The environment variable that arms the hook.
pub const ENV: &str = "HSMCA_TEST_FAULTS";

/// How often the control file is read again.
const RELOAD: Duration = Duration::from_millis(20);

pub use super::Op;

impl Op {
    fn parse(s: &str) -> Option<Option<Self>> {
        Some(Some(match s {
            "*" => return Some(None),
            "initialize" => Self::Initialize,
            "open" | "open_session" => Self::OpenSession,
            "login" => Self::Login,
            "find" | "find_objects" => Self::FindObjects,
            "sign" => Self::Sign,
            _ => return None,
        }))
    }

    fn function(self) -> Function {
        match self {
            Self::Initialize => Function::Initialize,
            Self::OpenSession => Function::OpenSession,
            Self::Login => Function::Login,
            Self::FindObjects => Function::FindObjectsInit,
            Self::Sign => Function::Sign,
        }
    }
}

/// The return values a plan may name (without the `CKR_` prefix).
fn parse_rv(s: &str) -> Option<RvError> {
    let name = s.strip_prefix("CKR_").unwrap_or(s);
    Some(match name {
        "SESSION_HANDLE_INVALID" => RvError::SessionHandleInvalid,
        "SESSION_CLOSED" => RvError::SessionClosed,
        "OBJECT_HANDLE_INVALID" => RvError::ObjectHandleInvalid,
        "KEY_HANDLE_INVALID" => RvError::KeyHandleInvalid,
        "USER_NOT_LOGGED_IN" => RvError::UserNotLoggedIn,
        "OPERATION_ACTIVE" => RvError::OperationActive,
        "DEVICE_ERROR" => RvError::DeviceError,
        "DEVICE_REMOVED" => RvError::DeviceRemoved,
        "DEVICE_MEMORY" => RvError::DeviceMemory,
        "TOKEN_NOT_PRESENT" => RvError::TokenNotPresent,
        "CRYPTOKI_NOT_INITIALIZED" => RvError::CryptokiNotInitialized,
        "GENERAL_ERROR" => RvError::GeneralError,
        "MECHANISM_INVALID" => RvError::MechanismInvalid,
        "DATA_LEN_RANGE" => RvError::DataLenRange,
        "FUNCTION_FAILED" => RvError::FunctionFailed,
        _ => return None,
    })
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Action {
    Fail(RvError),
    Stall(Duration),
}

#[derive(Debug)]
struct Rule {
    /// `None`: every call.
    op: Option<Op>,
    action: Action,
    remaining: Option<u32>,
    until: Option<Instant>,
}

impl Rule {
    fn fires(&mut self, op: Op, now: Instant) -> bool {
        if self.op.is_some_and(|o| o != op) || self.until.is_some_and(|u| now >= u) {
            return false;
        }
        match &mut self.remaining {
            Some(0) => false,
            Some(n) => {
                *n -= 1;
                true
            }
            None => true,
        }
    }
}

#[derive(Debug, Default)]
struct Plan {
    text: String,
    read_at: Option<Instant>,
    rules: Vec<Rule>,
    reset_sessions: bool,
}

/// See the module documentation. Disabled (the default) it never fails a
/// call and never touches the file system.
#[derive(Debug, Default)]
pub struct FaultInjector {
    control: Option<PathBuf>,
    plan: Mutex<Plan>,
}

impl FaultInjector {
    pub fn disabled() -> Self {
        Self::default()
    }

    /// Armed when [`ENV`] names a control file; disabled otherwise.
    pub fn from_env() -> Self {
        match std::env::var_os(ENV) {
            Some(p) if !p.is_empty() => {
                let control = PathBuf::from(p);
                tracing::warn!(
                    control = %control.display(),
                    "PKCS#11 fault injection is armed (a test hook; never set {ENV} in production)"
                );
                Self {
                    control: Some(control),
                    plan: Mutex::default(),
                }
            }
            _ => Self::disabled(),
        }
    }

    pub fn is_armed(&self) -> bool {
        self.control.is_some()
    }

    /// Called just before the real PKCS#11 call `op`: an injected error, or
    /// `Ok` to make the real call.
    pub fn check(&self, op: Op) -> Result<(), CkError> {
        if self.control.is_none() {
            return Ok(());
        }
        let now = Instant::now();
        let action = {
            let mut plan = self.lock();
            self.reload(&mut plan, now);
            plan.rules
                .iter_mut()
                .find_map(|rule| rule.fires(op, now).then_some(rule.action))
        };
        match action {
            None => Ok(()),
            Some(Action::Fail(rv)) => {
                tracing::warn!(?op, %rv, "test hook: injecting a PKCS#11 error");
                Err(CkError::Pkcs11(rv, op.function()))
            }
            Some(Action::Stall(d)) => {
                tracing::warn!(?op, stall = ?d, "test hook: stalling a PKCS#11 call");
                std::thread::sleep(d);
                Ok(())
            }
        }
    }

    /// True once for each `reset-sessions` in a newly loaded plan.
    pub fn take_reset_sessions(&self) -> bool {
        if self.control.is_none() {
            return false;
        }
        let mut plan = self.lock();
        self.reload(&mut plan, Instant::now());
        std::mem::take(&mut plan.reset_sessions)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Plan> {
        // A panic while holding this lock cannot leave a plan half-applied
        // in a way that matters: keep using it.
        self.plan.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn reload(&self, plan: &mut Plan, now: Instant) {
        let Some(path) = &self.control else { return };
        if plan.read_at.is_some_and(|t| now.duration_since(t) < RELOAD) {
            return;
        }
        plan.read_at = Some(now);
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text == plan.text {
            return;
        }
        let (rules, reset) = parse(&text, now);
        plan.rules = rules;
        plan.reset_sessions = reset;
        plan.text = text;
    }
}

fn parse(text: &str, now: Instant) -> (Vec<Rule>, bool) {
    let mut rules = Vec::new();
    let mut reset = false;
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if line == "reset-sessions" {
            reset = true;
            continue;
        }
        match parse_rule(line, now) {
            Some(rule) => rules.push(rule),
            None => tracing::warn!(line, "test hook: ignoring an unreadable fault line"),
        }
    }
    (rules, reset)
}

fn parse_rule(line: &str, now: Instant) -> Option<Rule> {
    let mut words = line.split_whitespace();
    let kind = words.next()?;
    let op = Op::parse(words.next()?)?;
    let action = match kind {
        "fault" => Action::Fail(parse_rv(words.next()?)?),
        "stall" => Action::Stall(humantime::parse_duration(words.next()?).ok()?),
        _ => return None,
    };
    let (mut remaining, mut until) = (None, None);
    for w in words {
        match w.split_once('=')? {
            ("count", n) => remaining = Some(n.parse().ok()?),
            ("for", d) => until = Some(now + humantime::parse_duration(d).ok()?),
            _ => return None,
        }
    }
    if remaining.is_none() && until.is_none() {
        remaining = Some(1);
    }
    Some(Rule {
        op,
        action,
        remaining,
        until,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn disabled_never_fails() {
        let f = FaultInjector::disabled();
        assert!(f.check(Op::Sign).is_ok());
        assert!(!f.take_reset_sessions());
    }

    #[test]
    fn counts_durations_and_ops() {
        let now = Instant::now();
        let (mut rules, reset) = parse(
            "# plan\nfault sign SESSION_HANDLE_INVALID\nfault * CKR_DEVICE_ERROR for=3s\nreset-sessions\nfault bogus X\n",
            now,
        );
        assert!(reset);
        assert_eq!(rules.len(), 2);
        assert!(!rules[0].fires(Op::Login, now));
        assert!(rules[0].fires(Op::Sign, now));
        assert!(!rules[0].fires(Op::Sign, now), "count defaults to 1");
        assert!(rules[1].fires(Op::Login, now + Duration::from_secs(2)));
        assert!(!rules[1].fires(Op::Sign, now + Duration::from_secs(3)));
        assert!(parse_rule("fault sign NOT_A_CKR", now).is_none());
        let stall = parse_rule("stall sign 2s count=3", now).unwrap();
        assert_eq!(stall.action, Action::Stall(Duration::from_secs(2)));
        assert_eq!(stall.remaining, Some(3));
        assert!(parse_rule("stall sign soon", now).is_none());
        assert!(parse_rule("fault sign DEVICE_ERROR count=x", now).is_none());
    }

    #[test]
    fn a_control_file_is_applied_once_per_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("faults");
        std::fs::write(&path, "fault sign DATA_LEN_RANGE count=1\nreset-sessions\n").unwrap();
        let f = FaultInjector {
            control: Some(path),
            plan: Mutex::default(),
        };
        let e = f.check(Op::Sign).unwrap_err();
        assert!(matches!(
            e,
            CkError::Pkcs11(RvError::DataLenRange, Function::Sign)
        ));
        assert!(f.check(Op::Sign).is_ok());
        assert!(f.take_reset_sessions());
        assert!(!f.take_reset_sessions());
    }
}
