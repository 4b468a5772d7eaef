//! What a certificate is for — client, server, or a constrained
//! intermediate — and, for an intermediate, which names the certificates it
//! signs may carry. The policy decides both; the certificate builder
//! encodes them; neither needs the other to say so.

use std::time::Duration;

use ipnet::IpNet;

/// What a leaf certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeafProfile {
    Client,
    Server,
    /// A CA certificate for a subordinate signer (mesh agents): pathLen 0,
    /// name constraints from the policy rule that granted it.
    Intermediate,
    /// A SPIFFE X509-SVID for a workload (serverAuth and clientAuth). Made
    /// only by the workload endpoint; no request can name it.
    Svid,
}

impl LeafProfile {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "" | "client" => Some(Self::Client),
            "server" => Some(Self::Server),
            "intermediate" => Some(Self::Intermediate),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Server => "server",
            Self::Intermediate => "intermediate",
            Self::Svid => "svid",
        }
    }
}

/// What a granting rule allows, for name constraints on an intermediate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permitted {
    /// `None`: any DNS name; otherwise dNSName subtrees (each permits the
    /// name and every name below it).
    pub dns: Option<Vec<String>>,
    /// `None`: any URI; otherwise the hosts URIs may name.
    pub uri_hosts: Option<Vec<String>>,
    pub ips: Option<Vec<IpNet>>,
    /// `None`: any subject; otherwise the exact common names leaves may
    /// carry (an empty list: none).
    pub common_names: Option<Vec<String>>,
    /// Whether leaves may be client and/or server certificates.
    pub client: bool,
    pub server: bool,
}

/// What the policy grants a request: a lifetime cap, and for an
/// intermediate the names the certificates it signs may carry.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    pub max_duration: Option<Duration>,
    pub permitted: Option<Permitted>,
}
