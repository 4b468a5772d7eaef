//! Who is calling: the kernel's word on the socket peer ([`Peer`]), and
//! the names and groups NSS gives it ([`identity::Identity`]), which the
//! policy matches and the audit log records.

pub mod identity;

/// Who is calling, from the kernel (SO_PEERCRED), not from anything the
/// client says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}
