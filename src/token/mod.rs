//! The PKCS#11 token: load the module, find the token by label (slot numbers
//! move when tokens are initialised), log in once for the whole process, and
//! find the CA key unambiguously. Signing happens in [`pool`], on threads that
//! own their sessions; nothing here runs on the async runtime.

// The fault hook is for tests only: the shipped build gets a stand-in
// without behaviour (see faults_off.rs).
#[cfg_attr(not(feature = "test-faults"), path = "faults_off.rs")]
pub mod faults;

/// The PKCS#11 calls the test build's fault hook can fail or stall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Initialize,
    OpenSession,
    Login,
    FindObjects,
    Sign,
}

pub mod jwt_key;
pub mod keygen;
pub mod pool;
pub mod pubkey;
pub mod queue;
mod supervisor;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use cryptoki::{
    context::{CInitializeArgs, CInitializeFlags, Pkcs11},
    error::{Error as CkError, RvError},
    object::{Attribute, AttributeType, KeyType as CkKeyType, ObjectClass, ObjectHandle},
    session::{Session, UserType},
    slot::Slot,
};
use secrecy::SecretString;
use spki::SubjectPublicKeyInfoOwned;

use self::faults::FaultInjector;
use crate::config::{KeyType, TokenLocator};

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot load PKCS#11 module {module}: {message}")]
    Load { module: String, message: String },
    #[error("no token labelled {0:?} (is SOFTHSM2_CONF or the module path right?)")]
    TokenNotFound(String),
    #[error("{count} tokens are labelled {label:?}; refusing to guess which one holds the CA key")]
    AmbiguousToken { label: String, count: usize },
    #[error("the PIN was rejected by the token")]
    PinIncorrect,
    #[error("the token's user PIN is locked")]
    PinLocked,
    #[error("no CA key {0} in the token (run `hsmca init`)")]
    KeyNotFound(String),
    #[error("no JWT signing key labelled {0:?} in the token (run `hsmca init`)")]
    JwtKeyNotFound(String),
    #[error("the CA key is ambiguous: {0}")]
    AmbiguousKey(String),
    #[error("CA key {key}: {problem}")]
    KeyUnsuitable { key: String, problem: String },
    #[error("CA key {0} already exists in the token (use --force to replace it)")]
    KeyExists(String),
    #[error("the signing queue is full; retry shortly")]
    Busy,
    #[error("the signer has stopped")]
    Stopped,
    /// The token is being reconnected; requests fail fast meanwhile.
    #[error("the HSM is unavailable; it is being reconnected")]
    Unavailable,
    /// The token refused this one operation (a request-level CKR_*).
    #[error("the HSM refused {function}: {rv}")]
    Rejected { function: String, rv: String },
    #[error(
        "a key of the token changed while reconnecting: expected public key SHA-256 {expected}, found {found}"
    )]
    KeyChanged { expected: String, found: String },
    #[error("PKCS#11 {function} failed: {rv}")]
    Pkcs11 { function: String, rv: String },
    #[error("PKCS#11: {0}")]
    Other(String),
}

/// The signing contract's view of a token error: what the caller should
/// do. The PKCS#11 detail stays in the message (for the log).
impl From<TokenError> for crate::signing::SignError {
    fn from(e: TokenError) -> Self {
        use crate::signing::SignError;
        match e {
            TokenError::Busy => SignError::Busy,
            TokenError::Stopped => SignError::Stopped,
            TokenError::Unavailable => SignError::Unavailable,
            TokenError::Rejected { .. } => SignError::Rejected(e.to_string()),
            other => SignError::Failed(other.to_string()),
        }
    }
}

impl TokenError {
    pub(crate) fn from_ck(e: CkError) -> Self {
        match e {
            CkError::Pkcs11(RvError::PinIncorrect, _) => Self::PinIncorrect,
            CkError::Pkcs11(RvError::PinLocked, _) => Self::PinLocked,
            CkError::Pkcs11(rv, f) => Self::Pkcs11 {
                function: format!("{f:?}"),
                rv: format!("{rv}"),
            },
            other => Self::Other(other.to_string()),
        }
    }
}

/// What a failed PKCS#11 call says about the state it leaves behind, which
/// decides how the signer recovers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultClass {
    /// This session (its handle, its view of the login, or the key handle
    /// it holds) is broken: a fresh session, a login and a new key lookup
    /// may succeed.
    Session,
    /// The token or the library is gone or confused: nothing works until a
    /// full rebuild (finalize, initialize, open, login, find the key).
    Token,
    /// This operation was refused; the session is fine for the next one.
    Request,
}

impl FaultClass {
    pub fn of(e: &CkError) -> Self {
        match e {
            CkError::Pkcs11(rv, _) => match rv {
                RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::ObjectHandleInvalid
                | RvError::KeyHandleInvalid
                | RvError::UserNotLoggedIn
                | RvError::OperationActive => Self::Session,
                RvError::DeviceError
                | RvError::DeviceRemoved
                | RvError::DeviceMemory
                | RvError::TokenNotPresent
                | RvError::TokenNotRecognized
                | RvError::CryptokiNotInitialized
                | RvError::GeneralError
                | RvError::SlotIdInvalid
                | RvError::PinIncorrect
                | RvError::PinLocked
                | RvError::PinExpired => Self::Token,
                _ => Self::Request,
            },
            // Errors raised by cryptoki itself (conversions, a missing
            // function) say nothing about the token's state.
            _ => Self::Request,
        }
    }

    /// True when the token says the session handle itself no longer exists:
    /// such a session must not be closed, since PKCS#11 modules (SoftHSM2
    /// among them) hand a freed handle number to the next session opened,
    /// which may already belong to another thread.
    pub fn handle_is_dead(e: &CkError) -> bool {
        matches!(
            e,
            CkError::Pkcs11(RvError::SessionHandleInvalid | RvError::SessionClosed, _)
        )
    }
}

/// Opens a session that is never closed implicitly: the owner closes it
/// when it knows the handle is still its own (see
/// [`FaultClass::handle_is_dead`]), and simply forgets it otherwise.
pub(crate) fn open_session(
    ctx: &Pkcs11,
    slot: Slot,
    rw: bool,
    faults: &FaultInjector,
) -> Result<Session, CkError> {
    faults.check(Op::OpenSession)?;
    if rw {
        ctx.open_rw_session_no_drop(slot)
    } else {
        ctx.open_ro_session_no_drop(slot)
    }
}

/// Logs the application in through `session`. Login is per application:
/// if another session already did it, the token says so and that is fine.
pub(crate) fn login(
    session: &Session,
    pin: &SecretString,
    faults: &FaultInjector,
) -> Result<(), CkError> {
    faults.check(Op::Login)?;
    match session.login(UserType::User, Some(pin)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The private key with this CKA_ID, looked up again after the handle went
/// stale. `None` unless exactly one matches: the full start-up checks run
/// again in the rebuild, which reports what is wrong.
pub(crate) fn find_private_by_id(
    session: &Session,
    id: &[u8],
    faults: &FaultInjector,
) -> Result<Option<ObjectHandle>, CkError> {
    faults.check(Op::FindObjects)?;
    let found = session.find_objects(&[
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::Id(id.to_vec()),
    ])?;
    Ok(match found.as_slice() {
        [one] => Some(*one),
        _ => None,
    })
}

/// How the CA key is named in the token.
#[derive(Debug, Clone)]
pub struct KeySelector {
    pub label: Option<String>,
    pub id: Option<Vec<u8>>,
}

impl KeySelector {
    pub fn from_locator(l: &TokenLocator) -> Self {
        Self {
            label: l.key_label.clone(),
            id: l.key_id.clone(),
        }
    }

    fn template(&self, class: ObjectClass) -> Vec<Attribute> {
        let mut t = vec![Attribute::Class(class)];
        if let Some(l) = &self.label {
            t.push(Attribute::Label(l.as_bytes().to_vec()));
        }
        if let Some(id) = &self.id {
            t.push(Attribute::Id(id.clone()));
        }
        t
    }
}

impl std::fmt::Display for KeySelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.label, &self.id) {
            (Some(l), Some(id)) => write!(f, "label={l:?} id={}", hex::encode(id)),
            (Some(l), None) => write!(f, "label={l:?}"),
            (None, Some(id)) => write!(f, "id={}", hex::encode(id)),
            (None, None) => write!(f, "(unnamed)"),
        }
    }
}

/// The CA key as found in the token.
#[derive(Debug, Clone)]
pub struct CaKey {
    pub private: ObjectHandle,
    pub id: Vec<u8>,
    pub label: String,
    pub spki: SubjectPublicKeyInfoOwned,
}

/// A loaded, logged-in token. The login session is kept open for the whole
/// life of the process: closing the last session logs the application out.
pub struct Token {
    ctx: Pkcs11,
    slot: Slot,
    login_session: Option<Session>,
    faults: Arc<FaultInjector>,
}

/// How long [`Token::open`] keeps trying a token that is not listed or
/// fails while it is being rewritten.
const START_SETTLE: Duration = Duration::from_secs(3);

impl Token {
    /// Loads the module, finds the token by label and logs in as user.
    pub fn open(locator: &TokenLocator, pin: &SecretString) -> Result<Self, TokenError> {
        Self::open_with(locator, pin, Arc::new(FaultInjector::disabled()))
    }

    /// [`Token::open`] with the calls passing through `faults` (a test hook
    /// that does nothing unless armed).
    pub fn open_with(
        locator: &TokenLocator,
        pin: &SecretString,
        faults: Arc<FaultInjector>,
    ) -> Result<Self, TokenError> {
        let ctx = Pkcs11::new(&locator.module).map_err(|e| TokenError::Load {
            module: locator.module.display().to_string(),
            message: e.to_string(),
        })?;
        // SoftHSM2 rewrites its token file on every login, and a process
        // that initialises the library or reads the token during that
        // rewrite does not list the token (or gets CKR_GENERAL_ERROR):
        // several daemons starting together on one token directory meet
        // this. A start-up that fails so is tried again after a fresh
        // C_Finalize + C_Initialize, for a few seconds. A wrong PIN is
        // never tried twice (that would count towards locking it).
        let deadline = Instant::now() + START_SETTLE;
        let mut pause = Duration::from_millis(20);
        loop {
            match Self::start(ctx.clone(), &locator.token_label, pin, faults.clone()) {
                Err(e @ (TokenError::TokenNotFound(_) | TokenError::Pkcs11 { .. }))
                    if Instant::now() + pause < deadline =>
                {
                    tracing::debug!(error = %e, "token not ready at start-up; trying again");
                    let _ = ctx.clone().finalize();
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                other => return other,
            }
        }
    }

    /// Initialises an already loaded module, finds the token and logs in.
    /// A library that is still initialised (a finalize that failed) is used
    /// as it is.
    pub(crate) fn start(
        ctx: Pkcs11,
        token_label: &str,
        pin: &SecretString,
        faults: Arc<FaultInjector>,
    ) -> Result<Self, TokenError> {
        faults.check(Op::Initialize).map_err(TokenError::from_ck)?;
        match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => return Err(TokenError::from_ck(e)),
        }
        let slot = find_slot(&ctx, token_label)?;
        let session = open_session(&ctx, slot, true, &faults).map_err(TokenError::from_ck)?;
        if let Err(e) = login(&session, pin, &faults) {
            let _ = session.close();
            return Err(TokenError::from_ck(e));
        }
        Ok(Self {
            ctx,
            slot,
            login_session: Some(session),
            faults,
        })
    }

    pub fn context(&self) -> &Pkcs11 {
        &self.ctx
    }

    pub fn slot(&self) -> Slot {
        self.slot
    }

    /// The session that holds the login; used for one-off work (lookup,
    /// key generation), never for the signing hot path.
    pub fn session(&self) -> Result<&Session, TokenError> {
        self.login_session
            .as_ref()
            .ok_or_else(|| TokenError::Other("token is closed".into()))
    }

    /// Finds exactly one private key and its public half (paired by CKA_ID)
    /// and checks that it is the kind of key the config says.
    pub fn find_ca_key(&self, sel: &KeySelector, expected: KeyType) -> Result<CaKey, TokenError> {
        let session = self.session()?;
        self.faults
            .check(Op::FindObjects)
            .map_err(TokenError::from_ck)?;
        let privs = session
            .find_objects(&sel.template(ObjectClass::PRIVATE_KEY))
            .map_err(TokenError::from_ck)?;
        let private = match privs.as_slice() {
            [] => return Err(TokenError::KeyNotFound(sel.to_string())),
            [one] => *one,
            many => {
                let found = describe_objects(session, many);
                let advice = if sel.id.is_some() {
                    "remove the extra keys: SoftHSM2 and other tokens do not keep CKA_ID unique"
                } else {
                    "give token.key_id to choose one"
                };
                return Err(TokenError::AmbiguousKey(format!(
                    "{} private keys match {sel}: {found}; {advice}",
                    many.len()
                )));
            }
        };
        let attrs = session
            .get_attributes(
                private,
                &[
                    AttributeType::Id,
                    AttributeType::Label,
                    AttributeType::KeyType,
                    AttributeType::Sign,
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                ],
            )
            .map_err(TokenError::from_ck)?;
        let mut id = Vec::new();
        let mut label = String::new();
        let mut key_type = None;
        let (mut sign, mut sensitive, mut extractable) = (false, false, true);
        for a in attrs {
            match a {
                Attribute::Id(v) => id = v,
                Attribute::Label(v) => label = String::from_utf8_lossy(&v).into_owned(),
                Attribute::KeyType(t) => key_type = Some(t),
                Attribute::Sign(b) => sign = b,
                Attribute::Sensitive(b) => sensitive = b,
                Attribute::Extractable(b) => extractable = b,
                _ => {}
            }
        }
        let unsuitable = |problem: &str| TokenError::KeyUnsuitable {
            key: sel.to_string(),
            problem: problem.to_owned(),
        };
        if !sign {
            return Err(unsuitable("CKA_SIGN is false"));
        }
        if !sensitive || extractable {
            return Err(unsuitable(
                "the private key is exportable (needs CKA_SENSITIVE=true and CKA_EXTRACTABLE=false)",
            ));
        }
        let want = if expected.is_rsa() {
            CkKeyType::RSA
        } else {
            CkKeyType::EC
        };
        if key_type != Some(want) {
            return Err(unsuitable(&format!(
                "it is a {key_type:?} key but ca.key_type is {}",
                expected.name()
            )));
        }

        // The public half must carry the same CKA_ID; SoftHSM2 (and others)
        // allow duplicates, so pairing by label alone could mix two keys.
        // Every public key the configured name matches must be that one
        // half: a same-named public key with another CKA_ID means two key
        // pairs (or a mismatched pair) answer to this name.
        let mut publics = session
            .find_objects(&[
                Attribute::Class(ObjectClass::PUBLIC_KEY),
                Attribute::Id(id.clone()),
            ])
            .map_err(TokenError::from_ck)?;
        for o in session
            .find_objects(&sel.template(ObjectClass::PUBLIC_KEY))
            .map_err(TokenError::from_ck)?
        {
            if !publics.contains(&o) {
                publics.push(o);
            }
        }
        let public = match publics.as_slice() {
            [] => {
                return Err(unsuitable(&format!(
                    "no public key object with CKA_ID {} pairs with the private key",
                    hex::encode(&id)
                )));
            }
            [one] => *one,
            many => {
                let mut all = vec![private];
                all.extend_from_slice(many);
                return Err(TokenError::AmbiguousKey(format!(
                    "{} public keys match {sel} or carry the private key's CKA_ID {}: {}; \
                     remove the extra objects or give token.key_id to choose one pair",
                    many.len(),
                    hex::encode(&id),
                    describe_objects(session, &all)
                )));
            }
        };
        let spki = pubkey::read_spki(session, public, expected)?;
        Ok(CaKey {
            private,
            id,
            label,
            spki,
        })
    }

    /// Logs out and unloads the module (cryptoki does not finalize on drop).
    pub fn close(mut self) {
        if let Some(s) = self.login_session.take() {
            let _ = s.logout();
            let _ = s.close();
        }
        let _ = self.ctx.clone().finalize();
    }
}

fn find_slot(ctx: &Pkcs11, label: &str) -> Result<Slot, TokenError> {
    let slots = ctx
        .get_slots_with_initialized_token()
        .map_err(TokenError::from_ck)?;
    let mut matching = Vec::new();
    for slot in slots {
        let info = token_info(ctx, slot)?;
        if info.label().trim_end() == label {
            matching.push(slot);
        }
    }
    match matching.as_slice() {
        [] => Err(TokenError::TokenNotFound(label.to_owned())),
        [one] => Ok(*one),
        many => Err(TokenError::AmbiguousToken {
            label: label.to_owned(),
            count: many.len(),
        }),
    }
}

/// C_GetTokenInfo, asked again after a general error: SoftHSM2 answers
/// CKR_GENERAL_ERROR now and then while another process on the same token
/// directory is writing its token file (two daemons starting together).
fn token_info(ctx: &Pkcs11, slot: Slot) -> Result<cryptoki::slot::TokenInfo, TokenError> {
    let mut tries = 0;
    loop {
        match ctx.get_token_info(slot) {
            Ok(info) => return Ok(info),
            Err(cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::GeneralError, _))
                if tries < 5 =>
            {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => return Err(TokenError::from_ck(e)),
        }
    }
}

/// "class label=… id=… handle=…" for each object, for messages about
/// ambiguous matches (the handle tells apart objects whose label and id are
/// the same).
fn describe_objects(session: &Session, objects: &[ObjectHandle]) -> String {
    objects
        .iter()
        .map(|o| {
            let attrs = session
                .get_attributes(
                    *o,
                    &[
                        AttributeType::Class,
                        AttributeType::Label,
                        AttributeType::Id,
                    ],
                )
                .unwrap_or_default();
            let mut class = String::from("object");
            let mut label = String::new();
            let mut id = String::new();
            for a in attrs {
                match a {
                    Attribute::Class(c) if c == ObjectClass::PRIVATE_KEY => {
                        class = "private key".into()
                    }
                    Attribute::Class(c) if c == ObjectClass::PUBLIC_KEY => {
                        class = "public key".into()
                    }
                    Attribute::Label(v) => label = String::from_utf8_lossy(&v).into_owned(),
                    Attribute::Id(v) => id = hex::encode(v),
                    _ => {}
                }
            }
            format!("[{class} label={label:?} id={id} handle={}]", o.handle())
        })
        .collect::<Vec<_>>()
        .join(", ")
}
